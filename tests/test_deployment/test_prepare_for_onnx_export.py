"""What prepare_for_onnx_export changes computes what it replaces: the
matrix form of adaptive average pooling, the plain RMSNorm, the position
embedding resized on every input, the mixers' exportable scan."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from mmvim.deployment import (AdaptiveAvgPool2dMatMul, OnnxExportWrapper,
                              input_normalisation, non_standard_ops,
                              prepare_for_onnx_export)
from mmvim.models import Vim
from mmvim.models.layers import RMSNorm
from mmvim.models.layers.rms_norm import RMSNormFn


@pytest.mark.parametrize('size', [(4, 4), (5, 7), (1, 1), (13, 2), (33, 65)])
@pytest.mark.parametrize('out', [1, 2, 3, 6, (2, 5)])
def test_adaptive_avg_pool_matmul_equals_pytorch(size, out):
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(AdaptiveAvgPool2dMatMul(out)(x),
                               nn.AdaptiveAvgPool2d(out)(x))


def test_adaptive_avg_pool_needs_both_sizes():
    with pytest.raises(ValueError, match='give both sizes'):
        AdaptiveAvgPool2dMatMul((None, 3))


def test_rms_norm_runs_plain_without_gradients():
    norm = RMSNorm(8)
    nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 8)
    want = RMSNormFn.apply(x, norm.weight, norm.eps)
    with torch.no_grad():
        assert torch.equal(norm(x), want)  # same operations, same bits
    out = norm(x.requires_grad_())
    assert out.grad_fn.name() == 'RMSNormFnBackward'  # training: the Fn


def _tiny_vim(**kwargs):
    torch.manual_seed(0)
    return Vim(arch=dict(embed_dims=16, depth=2), img_size=64,
               **kwargs).eval()


@pytest.mark.parametrize('hw', [(64, 64), (96, 48)])
def test_prepared_vim_computes_the_same(hw, monkeypatch):
    monkeypatch.setenv('MMVIM_SCAN_IMPL', 'ref')
    vim = _tiny_vim(out_type='featmap', out_indices=(0, 1))
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        want = vim(x)
        prepare_for_onnx_export(vim, dynamic=True)
        got = vim(x)
    assert vim.always_resize_pos_embed
    assert all(layer.mixer.onnx_scan for layer in vim.layers)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_prepare_replaces_adaptive_pools_and_refuses_dynamic_rope():
    model = nn.Sequential(nn.Conv2d(3, 3, 1),
                          nn.Sequential(nn.AdaptiveAvgPool2d(3)))
    prepare_for_onnx_export(model)
    assert isinstance(model[1][0], AdaptiveAvgPool2dMatMul)
    assert model[1][0].output_size == (3, 3)
    prepare_for_onnx_export(_tiny_vim(rope=True), dynamic=False)
    with pytest.raises(ValueError, match='drop --dynamic'):
        prepare_for_onnx_export(_tiny_vim(rope=True), dynamic=True)


def test_input_normalisation_of_the_preprocessors():
    from mmpretrain.models import ClsDataPreprocessor
    from mmseg.models import SegDataPreProcessor
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    cls = ClsDataPreprocessor(mean=mean, std=std, to_rgb=True)
    seg = SegDataPreProcessor(mean=mean, std=std, bgr_to_rgb=False)
    got_cls, got_seg = input_normalisation(cls), input_normalisation(seg)
    assert got_cls[2] == 'RGB' and got_seg[2] == 'BGR'
    for got in (got_cls, got_seg):
        assert got[0] == pytest.approx(mean) and got[1] == pytest.approx(std)
    assert input_normalisation(ClsDataPreprocessor()) == ([0.] * 3,
                                                         [1.] * 3, 'BGR')
    with pytest.raises(ValueError, match='unknown data preprocessor'):
        input_normalisation(nn.Identity())


def test_non_standard_ops_looks_into_subgraphs():
    from onnx import helper

    def model_with_scan_body_op(domain):
        body = helper.make_graph(
            [helper.make_node('MyOp', ['s', 'x'], ['t', 'y'],
                              domain=domain)], 'body', [], [])
        return helper.make_model(helper.make_graph(
            [helper.make_node('Relu', ['a'], ['b']),
             helper.make_node('Scan', ['b'], ['c'], body=body,
                              num_scan_inputs=1)], 'g', [], []))

    assert non_standard_ops(model_with_scan_body_op('custom')) == [
        'custom::MyOp']
    assert non_standard_ops(model_with_scan_body_op('')) == []
    assert non_standard_ops(model_with_scan_body_op('ai.onnx')) == []


def test_only_classifiers_and_segmentors_export():
    with pytest.raises(ValueError, match='ONNX export supports mmpretrain '
                       'ImageClassifier and mmseg EncoderDecoder models; '
                       'this config builds a Linear'):
        OnnxExportWrapper(nn.Linear(2, 2))


@pytest.mark.parametrize('bidirectional', ['ssm', 'layers'])
def test_ablation_mixers_export(bidirectional, tmp_path):
    """The paper's Table 4 variants export too ('layers' runs the 'none'
    mixer; dynamic, two 32-wide layers): ONNX Runtime gives what PyTorch
    gives at another size."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    from mmvim.deployment import OnnxRunner, export_onnx
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='ImageClassifier',
            data_preprocessor=dict(type='ClsDataPreprocessor', mean=[1] * 3,
                                   std=[2] * 3, to_rgb=True),
            backbone=dict(type='Vim', arch=dict(embed_dims=32, depth=2),
                          img_size=64, bidirectional=bidirectional),
            head=dict(type='LinearClsHead', num_classes=5,
                      in_channels=32))).eval()
    wrapper = OnnxExportWrapper(model)
    image = torch.rand(1, 3, 96, 64) * 255
    with torch.no_grad():
        want = wrapper(image).numpy()
    out = str(tmp_path / 'model.onnx')
    export_onnx(prepare_for_onnx_export(wrapper, dynamic=True), out, (64, 64),
                dynamic=True)
    got = OnnxRunner(out)(image.numpy())
    assert float(np.linalg.norm(got - want) / np.linalg.norm(want)) < 1e-5
