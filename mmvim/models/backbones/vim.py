import math
from typing import Sequence

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import CheckpointLoader

from mmvim.registry import MODELS
from ..layers import (VimBlock, VimPatchEmbed, RMSNorm, infer_square_grid,
                      insert_middle_cls, resize_pos_embed, split_middle_cls)
from .vim_checkpoint import (checkpoint_state_dict, describe_vim_weights,
                             vim_backbone_weights)


def _to_2tuple(x):
    return tuple(x) if isinstance(x, Sequence) else (x, x)


@MODELS.register_module()
class Vim(BaseModule):
    """Vision Mamba (Vim), arXiv 2401.09417, with the middle class token.

    Image -> strided patch conv -> J patch tokens; a class token inserted at
    position ``J // 2``; absolute position embedding added after the
    insertion; ``depth`` layers of RMSNorm + bidirectional Mamba mixer with a
    float32 residual stream; final RMSNorm ``norm_f``. Parameter names are
    those of the released checkpoints, which load as they are.

    Any input of at least ``patch_size`` pixels per side works: the position
    embedding is resized on the fly (bicubic over the patch grid, the class
    token's row kept apart) when the grid differs from the one of
    ``img_size``.

    Args:
        arch (str | dict): 'tiny'/'ti', 'small'/'s', 'base'/'b', or a dict
            with ``embed_dims`` and ``depth`` (optionally ``d_state``,
            ``expand``).
        img_size (int | tuple): size the position embedding is made for.
        patch_size (int): patch-embedding kernel size.
        stride (int): patch-embedding stride (16, or 8 for the long-sequence
            variants).
        in_channels (int): image channels.
        out_indices (int | Sequence[int]): layers whose output is returned;
            negative indices count from the end.
        out_type (str): 'cls_token' (B, D), 'featmap' (B, D, Hp, Wp) with the
            class token removed, or 'raw' (B, J + 1, D).
        final_norm (bool): apply ``norm_f`` to the last layer's output.
        drop_rate (float): dropout after the position embedding.
        drop_path_rate (float): stochastic depth, linear over the layers.
        frozen_stages (int): freeze the embeddings and the first
            ``frozen_stages`` layers (-1: nothing frozen).
        norm_eps (float): RMSNorm epsilon.
        interpolate_mode (str): mode used to resize the position embedding.
        mixer_cfg (dict): extra arguments of :class:`BiMambaMixer`.
        init_cfg (dict): ``dict(type='Pretrained', checkpoint=PATH)`` loads a
            released Vim file or an OpenMMLab checkpoint with a Vim backbone:
            keys mapped, classifier dropped, position embedding resized.
    """
    arch_zoo = {
        **dict.fromkeys(['ti', 'tiny'], {'embed_dims': 192, 'depth': 24}),
        **dict.fromkeys(['s', 'small'], {'embed_dims': 384, 'depth': 24}),
        **dict.fromkeys(['b', 'base'], {'embed_dims': 768, 'depth': 24}),
    }
    OUT_TYPES = ('cls_token', 'featmap', 'raw')

    def __init__(self,
                 arch='tiny',
                 img_size=224,
                 patch_size=16,
                 stride=16,
                 in_channels=3,
                 out_indices=-1,
                 out_type='cls_token',
                 final_norm=True,
                 drop_rate=0.,
                 drop_path_rate=0.,
                 frozen_stages=-1,
                 norm_eps=1e-5,
                 interpolate_mode='bicubic',
                 mixer_cfg=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        self.embed_dims = arch['embed_dims']
        self.depth = arch['depth']
        mixer_cfg = dict(mixer_cfg or {})
        for key in ('d_state', 'expand'):
            if key in arch:
                mixer_cfg.setdefault(key, arch[key])

        if out_type not in self.OUT_TYPES:
            raise ValueError(f"unknown out_type '{out_type}', choose from "
                             f"{', '.join(self.OUT_TYPES)}")
        self.out_type = out_type
        self.out_indices = self._parse_out_indices(out_indices)
        self.final_norm = final_norm
        self.frozen_stages = frozen_stages
        self.interpolate_mode = interpolate_mode

        self.patch_embed = VimPatchEmbed(in_channels, self.embed_dims,
                                         patch_size, stride)
        self.img_size = _to_2tuple(img_size)
        self.grid_size = self.patch_embed.grid_size(self.img_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, self.embed_dims))
        self.pos_drop = nn.Dropout(p=drop_rate)
        self._register_load_state_dict_pre_hook(self._resize_loaded_pos_embed)

        dpr = torch.linspace(0, drop_path_rate, self.depth).tolist()
        self.layers = nn.ModuleList([
            VimBlock(self.embed_dims, dpr[i], norm_eps, mixer_cfg)
            for i in range(self.depth)
        ])
        self.norm_f = RMSNorm(self.embed_dims, eps=norm_eps)

        self._init_reference_weights()
        if self.frozen_stages > 0:
            self._freeze_stages()

    # ---------------------------------------------------------- construction
    def _parse_arch(self, arch):
        if isinstance(arch, str):
            key = arch.lower()
            if key not in self.arch_zoo:
                raise ValueError(
                    f"unknown arch '{arch}', choose from "
                    f"{', '.join(sorted(set(self.arch_zoo)))} or give a dict "
                    'with embed_dims and depth')
            return dict(self.arch_zoo[key])
        if not isinstance(arch, dict) or not {'embed_dims', 'depth'} <= set(arch):
            raise ValueError('a custom arch must be a dict with the keys '
                             f"'embed_dims' and 'depth', got {arch!r}")
        unknown = set(arch) - {'embed_dims', 'depth', 'd_state', 'expand'}
        if unknown:
            raise ValueError(f'unknown arch keys {sorted(unknown)}; allowed: '
                             'embed_dims, depth, d_state, expand')
        return dict(arch)

    def _parse_out_indices(self, out_indices):
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        parsed = []
        for index in out_indices:
            if not -self.depth <= index < self.depth:
                raise ValueError(f'out index {index} is out of range for a '
                                 f'{self.depth}-layer Vim (use 0..'
                                 f'{self.depth - 1} or negative indices)')
            parsed.append(index % self.depth)
        return tuple(parsed)

    @torch.no_grad()
    def _init_reference_weights(self):
        """Initialisation of the reference model (see docs/vim_spec.md)."""
        nn.init.trunc_normal_(self.pos_embed, std=.02)
        nn.init.trunc_normal_(self.cls_token, std=.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=.02)
                if module.bias is not None and 'dt_proj' not in name:
                    nn.init.zeros_(module.bias)
        for layer in self.layers:
            layer.mixer.out_proj.weight.div_(math.sqrt(self.depth))

    def _freeze_stages(self):
        frozen = [self.patch_embed, self.pos_drop]
        frozen += list(self.layers[:self.frozen_stages])
        if self.frozen_stages >= self.depth and self.final_norm:
            frozen.append(self.norm_f)
        self.pos_embed.requires_grad = False
        self.cls_token.requires_grad = False
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        if mode and self.frozen_stages > 0:
            self._freeze_stages()
        return self

    # ------------------------------------------------------- position embed
    def _resize_loaded_pos_embed(self, state_dict, prefix, *args, **kwargs):
        """Load-state-dict pre-hook: fit a checkpoint's pos_embed to our grid."""
        name = prefix + 'pos_embed'
        if name not in state_dict:
            return
        state_dict[name], src_grid = self._fit_pos_embed(state_dict[name], name)
        if src_grid:
            print_log(f'{name}: {self._grid_text(src_grid)} resized to '
                      f'{self._grid_text(self.grid_size)}', logger='current')

    def _fit_pos_embed(self, loaded, name='pos_embed'):
        """A loaded pos_embed resized to this model's grid.

        Returns (pos_embed, the source grid, or None when nothing was
        resized: same grid, or a width mismatch load_state_dict reports).
        """
        if loaded.shape == self.pos_embed.shape or loaded.dim() != 3 \
                or loaded.shape[-1] != self.embed_dims:
            return loaded, None
        src_grid = infer_square_grid(loaded.shape[1] - 1, name)
        return resize_pos_embed(loaded, src_grid, self.grid_size,
                                self.interpolate_mode), src_grid

    @staticmethod
    def _grid_text(grid):
        return (f'{grid[0]}x{grid[1]} grid with the class token at index '
                f'{grid[0] * grid[1] // 2}')

    def _pos_embed_for(self, grid):
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, self.grid_size, grid,
                                self.interpolate_mode)

    # -------------------------------------------------------------- weights
    def init_weights(self):
        init_cfg = self.init_cfg if isinstance(self.init_cfg, dict) else {}
        if init_cfg.get('type') == 'Pretrained':
            if not self._is_init:
                self.load_pretrained(init_cfg['checkpoint'])
                self._is_init = True
            return
        super().init_weights()

    def load_pretrained(self, checkpoint_path, use_ema=False):
        """Load a released Vim file or an OpenMMLab checkpoint's backbone."""
        checkpoint = CheckpointLoader.load_checkpoint(
            checkpoint_path, map_location='cpu', logger='current')
        weights, dropped, layout = vim_backbone_weights(
            checkpoint_state_dict(checkpoint, use_ema))
        self._check_weights_fit(weights, checkpoint_path)

        # resized here so that the one log line below says so
        weights['pos_embed'], src_grid = self._fit_pos_embed(
            weights['pos_embed'])
        resized = (f'; pos_embed resized from {self._grid_text(src_grid)} to '
                   f'{self._grid_text(self.grid_size)}') if src_grid else ''
        self.load_state_dict(weights, strict=True)
        dropped_text = ', '.join(dropped) if dropped else 'nothing'
        print_log(
            f'Loaded Vim backbone from {checkpoint_path} ({layout} layout): '
            f'{len(weights)} tensors mapped, dropped {dropped_text}{resized}',
            logger='current')

    def _check_weights_fit(self, weights, source):
        own = self.state_dict()
        missing = [k for k in own if k not in weights]
        unexpected = [k for k in weights if k not in own]
        mismatched = [
            f'{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}'
            for k in own if k in weights and k != 'pos_embed'
            and weights[k].shape != own[k].shape
        ]
        pos = weights.get('pos_embed')
        if pos is not None and pos.shape[-1] != self.embed_dims:
            mismatched.append(f'pos_embed {tuple(pos.shape)} vs '
                              f'{tuple(own["pos_embed"].shape)}')
        if not (missing or unexpected or mismatched):
            return
        embed_dims, depth, kernel = describe_vim_weights(weights)
        problems = []
        for title, keys in (('missing', missing), ('unexpected', unexpected),
                            ('shape mismatch (checkpoint vs model)',
                             mismatched)):
            if keys:
                shown = ', '.join(keys[:6]) + (' ...' if len(keys) > 6 else '')
                problems.append(f'{title} ({len(keys)}): {shown}')
        cause = (f'the checkpoint is a Vim with embed_dims={embed_dims}, '
                 f'depth={depth}, patch kernel {kernel}; this backbone has '
                 f'embed_dims={self.embed_dims}, depth={self.depth}, patch '
                 f'kernel {tuple(self.patch_embed.proj.weight.shape[-2:])}')
        if embed_dims != self.embed_dims or depth != self.depth:
            matches = sorted(name for name, cfg in self.arch_zoo.items()
                             if len(name) > 2 and cfg['embed_dims'] ==
                             embed_dims and cfg['depth'] == depth)
            cause += (f": set arch='{matches[0]}'" if matches else
                      ': set arch to match the checkpoint')
        raise ValueError(f'{source} does not fit this Vim backbone; '
                         + '; '.join(problems) + f'. Likely cause: {cause}')

    # -------------------------------------------------------------- forward
    def forward(self, x):
        """x: (B, C, H, W) -> tuple with one output per out index."""
        tokens, grid = self.patch_embed(x)
        cls_token = self.cls_token.expand(tokens.shape[0], -1, -1)
        stream = insert_middle_cls(tokens, cls_token)
        stream = self.pos_drop(stream + self._pos_embed_for(grid))
        stream = stream.float()  # the residual stream is kept in float32

        outs = []
        for i, layer in enumerate(self.layers):
            stream = layer(stream)
            if i in self.out_indices:
                out = stream
                if i == self.depth - 1 and self.final_norm:
                    out = self.norm_f(stream)
                outs.append(self._format_output(out, grid))
        return tuple(outs)

    def _format_output(self, x, grid):
        if self.out_type == 'raw':
            return x
        if self.out_type == 'cls_token':
            return x[:, (x.shape[1] - 1) // 2]  # J // 2
        patches, _ = split_middle_cls(x)
        return patches.reshape(x.shape[0], grid[0], grid[1],
                               -1).permute(0, 3, 1, 2).contiguous()
