from typing import Sequence

import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule

from mmvim.registry import MODELS


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """ViTDet's simple feature pyramid on a plain backbone's single map.

    The stride-16 map ``(B, in_channels, H, W)`` is turned into maps of
    strides 4, 8, 16, 32 by two deconvolutions, one deconvolution, identity
    and a max-pool (``scale_factors`` 4, 2, 1, 0.5); each level then gets a
    1x1 lateral and a 3x3 output conv with ``norm_cfg``. With ``num_outs``
    larger than the number of scales, extra levels are max-pooled (stride 2)
    from the last one, e.g. stride 64 for Cascade Mask R-CNN's RPN.

    Args:
        in_channels (int): channels of the backbone map.
        out_channels (int): channels of every output level.
        num_outs (int): number of output levels (>= len(scale_factors)).
        scale_factors (Sequence[float]): resampling of each level, from
            {4, 2, 1, 0.5}.
        norm_cfg (dict): norm after the deconvolutions and the convs.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 num_outs: int = 5,
                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 norm_cfg: dict = dict(type='LN2d', requires_grad=True),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if num_outs < len(scale_factors):
            raise ValueError(
                f'num_outs={num_outs} is fewer than the {len(scale_factors)} '
                f'scale_factors {tuple(scale_factors)}; raise num_outs')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.scale_factors = tuple(scale_factors)

        self.resamplers = nn.ModuleList(
            self._resampler(in_channels, scale, norm_cfg)
            for scale in self.scale_factors)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for scale in self.scale_factors:
            channels = in_channels // 4 if scale == 4.0 else (
                in_channels // 2 if scale == 2.0 else in_channels)
            self.lateral_convs.append(
                ConvModule(channels, out_channels, 1, norm_cfg=norm_cfg,
                           act_cfg=None, inplace=False))
            self.fpn_convs.append(
                ConvModule(out_channels, out_channels, 3, padding=1,
                           norm_cfg=norm_cfg, act_cfg=None, inplace=False))

    @staticmethod
    def _resampler(channels, scale, norm_cfg):
        if scale == 4.0:
            return nn.Sequential(
                nn.ConvTranspose2d(channels, channels // 2, 2, stride=2),
                build_norm_layer(norm_cfg, channels // 2)[1],
                nn.GELU(),
                nn.ConvTranspose2d(channels // 2, channels // 4, 2,
                                   stride=2))
        if scale == 2.0:
            return nn.ConvTranspose2d(channels, channels // 2, 2, stride=2)
        if scale == 1.0:
            return nn.Identity()
        if scale == 0.5:
            return nn.MaxPool2d(kernel_size=2, stride=2)
        raise ValueError(f'scale factor {scale} is not supported; use 4, 2, '
                         '1 or 0.5')

    def forward(self, inputs):
        """inputs: a tuple whose last element is ``(B, in_channels, H, W)``
        (the backbone's stride-16 map); returns ``num_outs`` maps of
        ``(B, out_channels, H * s, W * s)``."""
        x = inputs[-1] if isinstance(inputs, (tuple, list)) else inputs
        outs = [
            fpn(lateral(resample(x))) for resample, lateral, fpn in zip(
                self.resamplers, self.lateral_convs, self.fpn_convs)
        ]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
