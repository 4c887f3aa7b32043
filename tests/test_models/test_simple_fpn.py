"""SimpleFPN and LN2d: shapes, the per-pixel LayerNorm, and what the RoI
heads read from them (mmcv's RoIAlign indexes its input as contiguous NCHW:
a channels-last level gave scrambled RoI features and a detector whose RoI
classifier never left the class prior)."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from mmcv.ops import RoIAlign

from mmvim.models.layers import LayerNorm2d
from mmvim.models.necks import SimpleFPN


def test_ln2d_normalises_each_pixel_over_channels():
    torch.manual_seed(0)
    norm = LayerNorm2d(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 8, 5, 7) * 3 + 1
    out = norm(x)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + norm.eps)
    expected = expected * norm.weight[:, None, None] + norm.bias[:, None, None]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous()


def test_levels_have_the_vitdet_strides():
    neck = SimpleFPN(in_channels=32, out_channels=16, num_outs=5)
    outs = neck((torch.randn(2, 32, 8, 12), ))
    # stride-16 map of a 128x192 image -> strides 4, 8, 16, 32, 64
    assert [tuple(o.shape) for o in outs] == [(2, 16, 32, 48), (2, 16, 16, 24),
                                             (2, 16, 8, 12), (2, 16, 4, 6),
                                             (2, 16, 2, 3)]


def test_every_level_is_read_correctly_by_mmcv_roi_align():
    torch.manual_seed(0)
    neck = SimpleFPN(in_channels=32, out_channels=16, num_outs=5)
    rois = torch.tensor([[0, 3.5, 7.0, 60.2, 41.9], [1, 30.0, 2.5, 120.0, 90.0],
                         [1, 0.0, 0.0, 127.0, 127.0]])
    outs = neck(torch.randn(2, 32, 8, 8))
    for level, stride in zip(outs, (4, 8, 16, 32, 64)):
        assert level.is_contiguous(), f'stride-{stride} level'
        ours = RoIAlign(7, spatial_scale=1 / stride, sampling_ratio=0,
                        aligned=True)(level, rois)
        reference = torchvision.ops.roi_align(
            level, rois, 7, spatial_scale=1 / stride, sampling_ratio=0,
            aligned=True)
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_input_through_every_level():
    x = torch.randn(1, 32, 4, 4, requires_grad=True)
    outs = SimpleFPN(in_channels=32, out_channels=8)(x)
    for level in outs:
        grad, = torch.autograd.grad(level.square().sum(), x,
                                    retain_graph=True)
        assert grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match='fewer than the 4 scale_factors'):
        SimpleFPN(32, 16, num_outs=3)
    with pytest.raises(ValueError, match='scale factor 3.0 is not supported'):
        SimpleFPN(32, 16, scale_factors=(3.0, 1.0))


def test_max_pooled_extra_level_matches_f_max_pool():
    neck = SimpleFPN(in_channels=32, out_channels=8, num_outs=6)
    outs = neck(torch.randn(1, 32, 16, 16))
    assert len(outs) == 6
    torch.testing.assert_close(outs[5], F.max_pool2d(outs[4], 1, stride=2))
