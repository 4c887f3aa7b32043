import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvim.registry import MODELS


@MODELS.register_module('LN2d')
class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a channels-first map, as in ViTDet.

    ``x: (B, C, H, W)``; each pixel's C values are normalised on their own.
    Registered as ``'LN2d'`` so configs write ``norm_cfg=dict(type='LN2d')``.
    The output is contiguous NCHW: mmcv's RoIAlign (CPU and CUDA) indexes
    its input's memory as NCHW and reads a channels-last tensor as noise.
    """
    _abbr_ = 'ln'

    def __init__(self, num_channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        self.num_channels = num_channels

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (self.num_channels, ), self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2).contiguous()
