"""Released weights reproduce the reference model's outputs.

``expected_vim-ti_seed0.npz`` was recorded from the reference Vim code on the
official-layout checkpoint ``make_official_weights.make_checkpoint('vim-ti',
0)``. The other architectures have no recording: there the independent
functional oracle ``reference_vim.py`` (itself checked against the recording)
stands in for the reference model.
"""
import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.runner import load_checkpoint

import make_official_weights
from mmvim.models import Vim
from reference_vim import reference_vim_forward

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# tests/conftest.py puts this folder on sys.path (make_official_weights)
CONFORMANCE_DIR = osp.join(ROOT, 'tests', 'data', 'conformance')
TOLERANCE = 1e-4
ARCHS = {  # layout name -> (mmvim arch, stride)
    'vim-ti': ('tiny', 16),
    'vim-ti-s8': ('tiny', 8),
    'vim-s': ('small', 16),
    'vim-s-s8': ('small', 8),
    'vim-b': ('base', 16),
}


def rel_l2(ours, ref):
    """||ours - ref|| / ||ref|| in float64."""
    ours, ref = ours.double(), ref.double()
    return ((ours - ref).norm() / ref.norm()).item()


def _converter():
    spec = importlib.util.spec_from_file_location(
        'vim2mmvim', osp.join(ROOT, 'tools', 'model_converters', 'vim2mmvim.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _classifier(arch, stride):
    """mmpretrain ImageClassifier: Vim + linear head on the class token."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return _build_classifier(MODELS, arch, stride)


def _build_classifier(MODELS, arch, stride):
    return MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='Vim', arch=arch, img_size=224, stride=stride),
        head=dict(type='LinearClsHead', num_classes=1000, in_channels={
            'tiny': 192, 'small': 384, 'base': 768}[arch]))).eval()


def _converted_outputs(official_checkpoint, tmp_path, layout, seed, images):
    arch, stride = ARCHS[layout]
    dst = str(tmp_path / f'{layout}_mmpretrain.pth')
    _converter().convert(official_checkpoint(layout, seed), dst)
    model = _classifier(arch, stride)
    load_checkpoint(model, dst, map_location='cpu', strict=True)
    with torch.no_grad():
        features = model.extract_feat(images)[0]
        logits = model.head.fc(features)
    return features, logits


def test_recorded_reference_vim_ti(official_checkpoint, tmp_path):
    expected = np.load(osp.join(CONFORMANCE_DIR, 'expected_vim-ti_seed0.npz'))
    images = make_official_weights.make_input(0, (2, 3, 224, 224))
    features, logits = _converted_outputs(official_checkpoint, tmp_path,
                                          'vim-ti', 0, images)
    err_f = rel_l2(features, torch.from_numpy(expected['features']))
    err_l = rel_l2(logits, torch.from_numpy(expected['logits']))
    print(f'vim-ti conformance: features {err_f:.2e}, logits {err_l:.2e}')
    assert err_f < TOLERANCE and err_l < TOLERANCE


def test_oracle_matches_recording():
    expected = np.load(osp.join(CONFORMANCE_DIR, 'expected_vim-ti_seed0.npz'))
    features, logits = reference_vim_forward(
        make_official_weights.make_state_dict('vim-ti', 0),
        make_official_weights.make_input(0, (2, 3, 224, 224)))
    assert rel_l2(features, torch.from_numpy(expected['features'])) < TOLERANCE
    assert rel_l2(logits, torch.from_numpy(expected['logits'])) < TOLERANCE


@pytest.mark.parametrize('layout', ['vim-ti-s8', 'vim-s', 'vim-s-s8', 'vim-b'])
def test_every_released_architecture(layout, official_checkpoint, tmp_path):
    seed = 3
    images = make_official_weights.make_input(seed, (1, 3, 224, 224))
    features, logits = _converted_outputs(official_checkpoint, tmp_path,
                                          layout, seed, images)
    ref_features, ref_logits = reference_vim_forward(
        make_official_weights.make_state_dict(layout, seed), images,
        stride=ARCHS[layout][1])
    err_f, err_l = rel_l2(features, ref_features), rel_l2(logits, ref_logits)
    print(f'{layout} conformance: features {err_f:.2e}, logits {err_l:.2e}')
    assert err_f < TOLERANCE and err_l < TOLERANCE


def test_backbone_alone_loads_released_file(official_checkpoint):
    """Same numbers through init_cfg=Pretrained (the dense-task path)."""
    expected = np.load(osp.join(CONFORMANCE_DIR, 'expected_vim-ti_seed0.npz'))
    model = Vim('tiny', init_cfg=dict(type='Pretrained',
                                      checkpoint=official_checkpoint()))
    model.init_weights()
    with torch.no_grad():
        features = model.eval()(
            make_official_weights.make_input(0, (2, 3, 224, 224)))[0]
    assert rel_l2(features, torch.from_numpy(expected['features'])) < TOLERANCE
