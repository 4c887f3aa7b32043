"""Every experiment config under configs/ builds its model and runs a
forward at a small size (new configs are covered by themselves)."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'vim', '*.py')) +
                 glob.glob(osp.join(ROOT, 'configs', 'vim', 'ablations',
                                    '*.py')) +
                 glob.glob(osp.join(ROOT, 'configs', 'hier_vim', '*.py')))


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.basename(p))
def test_config_builds_and_runs(path):
    cfg = Config.fromfile(path)
    scope = cfg.default_scope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS'])
    __import__(f'{scope}.utils', fromlist=['register_all_modules'])\
        .register_all_modules(init_default_scope=False)
    model_cfg = cfg.model.copy()
    if model_cfg.backbone.type == 'HierVim':
        _shallow_hier_vim(model_cfg.backbone)
    else:
        _shallow_vim(model_cfg.backbone)
    model_cfg.backbone.init_cfg = None
    if cfg.get('data_preprocessor') is not None:  # as Runner.build_model
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    size = cfg.model.backbone.get('img_size', 64)
    size = min(size if isinstance(size, int) else size[0], 128)
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.MODELS.build(model_cfg).eval()
        if scope != 'mmdet':  # detectors need data samples for any forward
            with torch.no_grad():
                out = model(torch.randn(1, 3, size, size), mode='tensor')
            outs = out if isinstance(out, (tuple, list)) else [out]
            assert all(torch.isfinite(o).all() for o in outs)
        # the training data path: the data preprocessor batches raw images
        # (with the config's batch augments) into a loss computation
        batch = _raw_batch(scope, size)
        data = model.data_preprocessor(batch, training=True)
        assert data['inputs'].shape[0] == 2
        if scope == 'mmdet':
            model.train()
            with torch.no_grad():
                losses = model(**data, mode='loss')
            _, log_vars = model.parse_losses(losses)
            assert all(torch.isfinite(torch.as_tensor(v))
                       for v in log_vars.values()), log_vars


def _shallow_vim(backbone):
    """A shallow twin of the configured Vim keeps this test fast; the full
    depth is what the conformance tests exercise."""
    arch = backbone.get('arch', 'tiny')
    dims = {'tiny': 192, 'ti': 192, 'small': 384, 's': 384, 'base': 768,
            'b': 768}[arch] if isinstance(arch, str) else arch['embed_dims']
    out_indices = backbone.get('out_indices', -1)
    num_outs = 1 if isinstance(out_indices, int) else len(out_indices)
    backbone.arch = dict(embed_dims=dims, depth=max(2, num_outs))
    if num_outs > 1:
        backbone.out_indices = list(range(num_outs))


def _shallow_hier_vim(backbone):
    """Hier-Vim with one block per stage at the configured widths (the
    heads' input channels), the same stages out."""
    from mmvim.models import HierVim
    arch = backbone.get('arch', 'tiny')
    dims = (HierVim.arch_zoo[arch.lower()] if isinstance(arch, str)
            else arch)['embed_dims']
    backbone.arch = dict(embed_dims=dims, depths=(1, 1, 1, 1))


def _raw_batch(scope, size):
    """Two uint8 images with their annotations, as a dataloader hands them
    over (of different sizes for segmentation, which pads to crop size; one
    box and mask per image for detection)."""
    second = (size - 8, size) if scope == 'mmseg' else (size, size)
    images = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8),
              torch.randint(0, 255, (3, *second), dtype=torch.uint8)]
    samples = []
    for image in images:
        if scope == 'mmseg':
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample()
            sample.gt_sem_seg = PixelData(
                data=torch.zeros(1, *image.shape[1:], dtype=torch.long))
        elif scope == 'mmdet':
            import numpy as np
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            h, w = image.shape[1:]
            sample = DetDataSample(metainfo=dict(
                img_shape=(h, w), ori_shape=(h, w), scale_factor=(1., 1.)))
            masks = np.zeros((1, h, w), np.uint8)
            masks[0, 8:h // 2, 16:w // 2] = 1
            sample.gt_instances = InstanceData(
                bboxes=torch.tensor([[16., 8., w / 2, h / 2]]),
                labels=torch.tensor([1]), masks=BitmapMasks(masks, h, w))
        elif scope == 'mmpretrain':
            from mmpretrain.structures import DataSample
            sample = DataSample().set_gt_label(1)
        else:
            raise NotImplementedError(f'no raw batch for {scope}')
        samples.append(sample)
    return dict(inputs=images, data_samples=samples)
