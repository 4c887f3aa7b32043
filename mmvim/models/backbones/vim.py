import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import CheckpointLoader

from mmvim.registry import MODELS
from ..layers import (CLS_TOKEN_POSITIONS, RMSNorm, VimBlock, VimPatchEmbed,
                      apply_reference_rope, cls_token_indices,
                      insert_cls_tokens, resize_pos_embed, rope_tables,
                      split_cls_tokens)
from .vim_checkpoint import (check_vim_weights_fit, checkpoint_state_dict,
                             fit_pos_embed, vim_backbone_weights)


def lecun_normal_(weight):
    """LeCun normal: a normal of std sqrt(1 / fan_in) truncated at two
    standard deviations and rescaled so that the truncated draw keeps that
    std (0.8796... is the std of a unit normal truncated to [-2, 2]), as
    the reference's ``timm.models.layers.lecun_normal_``."""
    fan_in = weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / .87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


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
        out_type (str): 'cls_token' (B, D) (the mean of the two for
            'double'), 'featmap' (B, D, Hp, Wp) with the class tokens
            removed, 'avg_featmap' (B, D) the mean of the patch tokens
            (paper Table 5 "mean pool"), or 'raw' (B, M, D) every token
            (with ``VimMaxPoolClsHead``: Table 5 "max pool").
        final_norm (bool): apply ``norm_f`` to the last layer's output.
        drop_rate (float): dropout after the position embedding.
        drop_path_rate (float): stochastic depth, linear over the layers.
        frozen_stages (int): freeze the embeddings and the first
            ``frozen_stages`` layers (-1: nothing frozen).
        norm_eps (float): RMSNorm epsilon.
        interpolate_mode (str): mode used to resize the position embedding.
        mixer_cfg (dict): extra arguments of :class:`BiMambaMixer`.
        cls_token_position (str | None): where the class token goes (paper
            Table 5): 'middle' (J // 2, the released models), 'head' (index
            0), 'double' (``cls_token_head`` at 0 and ``cls_token_tail`` at
            J + 1, read as their mean), or None (no class token).
        with_pos_embed (bool): the absolute position embedding (the
            reference's ``if_abs_pos_embed``).
        bidirectional (str): the bidirectional strategy (paper Table 4):
            'ssm_conv' (the released models: a backward SSM and conv of its
            own in every mixer), 'ssm' (a backward SSM sharing the forward
            conv and projections), 'layers' (unidirectional layers in pairs:
            ``s + f(s) + flip(b(flip(s)))`` summing outputs and residuals as
            the reference's ``if_bidirectional``) or 'none' (Mamba).
        sequence_flip_prob (float): in training, flip the whole token
            sequence with this probability (Table 4 "bidirectional
            sequence"; the reference's ``flip_img_sequences_ratio``); outputs
            are flipped back.
        rope (bool): the reference's rotary embedding (``if_rope``) before
            every layer, see :mod:`mmvim.models.layers.rope`.
        rope_residual (bool): rotate the residual stream too
            (``if_rope_residual``).
        with_cp (bool): activation checkpointing per layer in training:
            each layer keeps only its input for backward and runs again
            there (less memory, about one more forward of time).
        init_cfg (dict): ``dict(type='Pretrained', checkpoint=PATH)`` loads a
            released Vim file or an OpenMMLab checkpoint with a Vim backbone:
            keys mapped, classifier dropped, position embedding resized.
    """
    arch_zoo = {
        **dict.fromkeys(['ti', 'tiny'], {'embed_dims': 192, 'depth': 24}),
        **dict.fromkeys(['s', 'small'], {'embed_dims': 384, 'depth': 24}),
        **dict.fromkeys(['b', 'base'], {'embed_dims': 768, 'depth': 24}),
    }
    OUT_TYPES = ('cls_token', 'featmap', 'avg_featmap', 'raw')
    BIDIRECTIONAL = ('ssm_conv', 'ssm', 'layers', 'none')

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
                 cls_token_position='middle',
                 with_pos_embed=True,
                 bidirectional='ssm_conv',
                 sequence_flip_prob=0.,
                 rope=False,
                 rope_residual=False,
                 with_cp=False,
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
        if cls_token_position not in CLS_TOKEN_POSITIONS:
            raise ValueError(
                f'unknown cls_token_position {cls_token_position!r}, choose '
                f'from {CLS_TOKEN_POSITIONS}')
        if out_type == 'cls_token' and cls_token_position is None:
            raise ValueError("out_type='cls_token' needs a class token: set "
                             "cls_token_position or use out_type="
                             "'avg_featmap' (mean pool) or 'raw' (max pool)")
        if bidirectional not in self.BIDIRECTIONAL:
            raise ValueError(f'unknown bidirectional={bidirectional!r}, '
                             f'choose from {self.BIDIRECTIONAL}')
        if bidirectional == 'layers' and self.depth % 2:
            raise ValueError("bidirectional='layers' pairs the layers: "
                             f'depth must be even, got {self.depth}')
        if rope and bidirectional == 'layers':
            raise ValueError("rope with bidirectional='layers' is not "
                             'supported; use one of them')
        if not 0 <= sequence_flip_prob <= 1:
            raise ValueError('sequence_flip_prob must be in [0, 1], got '
                             f'{sequence_flip_prob}')
        self.cls_token_position = cls_token_position
        self.bidirectional = bidirectional
        self.sequence_flip_prob = sequence_flip_prob
        self.rope = rope
        self.rope_residual = rope_residual
        self.with_cp = with_cp
        self.out_indices = self._parse_out_indices(out_indices)
        if 'bidirectional' in mixer_cfg:
            raise ValueError('set bidirectional on Vim, not in mixer_cfg')
        mixer_cfg['bidirectional'] = {'layers': 'none'}.get(bidirectional,
                                                            bidirectional)
        self.out_type = out_type
        self.final_norm = final_norm
        self.frozen_stages = frozen_stages
        self.interpolate_mode = interpolate_mode

        self.patch_embed = VimPatchEmbed(in_channels, self.embed_dims,
                                         patch_size, stride)
        self.img_size = _to_2tuple(img_size)
        self.grid_size = self.patch_embed.grid_size(self.img_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_cls_tokens = len(cls_token_indices(0, cls_token_position))
        # the reference's parameter names for each class-token layout
        self.cls_token_names = {
            'double': ('cls_token_head', 'cls_token_tail'),
            None: ()}.get(cls_token_position, ('cls_token', ))
        for name in self.cls_token_names:
            self.register_parameter(
                name, nn.Parameter(torch.zeros(1, 1, self.embed_dims)))
        self.pos_embed = nn.Parameter(torch.zeros(
            1, num_patches + self.num_cls_tokens,
            self.embed_dims)) if with_pos_embed else None
        self.pos_drop = nn.Dropout(p=drop_rate)
        self._register_load_state_dict_pre_hook(self._resize_loaded_pos_embed)
        # set for an ONNX export with dynamic input sizes: the graph then
        # resizes the position embedding for every input grid (an identity
        # on the img_size grid) instead of keeping the traced input's branch
        self.always_resize_pos_embed = False

        dpr = torch.linspace(0, drop_path_rate, self.depth,
                             device='cpu').tolist()
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
        if self.bidirectional == 'layers' and any(i % 2 == 0 for i in parsed):
            raise ValueError(
                "with bidirectional='layers' the layers work in pairs and "
                'only the second of each pair (odd indices) has an output; '
                f'got out_indices {parsed}')
        return tuple(parsed)

    @torch.no_grad()
    def _init_reference_weights(self):
        """Initialisation of the reference model (docs/vim.md,
        Initialisation): pos_embed and the class tokens trunc-normal 0.02; the patch
        conv LeCun normal with a zero bias; every Linear bias zero except
        dt_proj's; the mixers keep their own (Mamba's) rules, with each
        out_proj.weight redrawn kaiming-uniform (a = sqrt(5)) and divided by
        sqrt(depth). Everything else keeps PyTorch's default."""
        for param in self._token_params():
            nn.init.trunc_normal_(param, std=.02)
        lecun_normal_(self.patch_embed.proj.weight)
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module.bias is not None \
                    and name.rsplit('.', 1)[-1] not in ('dt_proj',
                                                        'dt_proj_b'):
                nn.init.zeros_(module.bias)
        for layer in self.layers:
            out_proj = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(out_proj, a=math.sqrt(5))
            out_proj.div_(math.sqrt(self.depth))

    def get_layer_depth(self, param_name, prefix=''):
        """(layer depth, number of depths) of a parameter for layer-wise lr
        decay, mmpretrain's idiom: the embeddings and class tokens 0,
        ``layers.i`` i + 1, everything else (norm_f, and outside the
        backbone: necks, heads) depth + 1, of depth + 2 in all."""
        num_layers = self.depth + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name.startswith('patch_embed.') or name in (
                'pos_embed', ) + self.cls_token_names:
            return 0, num_layers
        if name.startswith('layers.'):
            return int(name.split('.')[1]) + 1, num_layers
        return num_layers - 1, num_layers

    def _token_params(self):
        """The position embedding (if any) and the class tokens."""
        names = ('pos_embed', ) + self.cls_token_names
        return [getattr(self, n) for n in names if getattr(self, n) is not None]

    def _freeze_stages(self):
        frozen = [self.patch_embed, self.pos_drop]
        frozen += list(self.layers[:self.frozen_stages])
        if self.frozen_stages >= self.depth and self.final_norm:
            frozen.append(self.norm_f)
        for param in self._token_params():
            param.requires_grad = False
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
        if self.pos_embed is None:
            return loaded, None
        return fit_pos_embed(loaded, self.pos_embed.shape, self.grid_size,
                             self.cls_token_position, self.interpolate_mode,
                             name)

    def _grid_text(self, grid):
        indices = cls_token_indices(grid[0] * grid[1],
                                    self.cls_token_position)
        where = (f" with the class token{'s' * (len(indices) > 1)} at index "
                 + ' and '.join(map(str, indices))) if indices else ''
        return f'{grid[0]}x{grid[1]} grid{where}'

    def _pos_embed_for(self, grid):
        if self.always_resize_pos_embed:
            return resize_pos_embed(self.pos_embed, self.grid_size, grid,
                                    self.interpolate_mode,
                                    self.cls_token_position, always=True)
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, self.grid_size, grid,
                                self.interpolate_mode,
                                self.cls_token_position)

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
        check_vim_weights_fit(
            weights, {k: v.shape for k, v in self.state_dict().items()},
            (self.embed_dims, self.depth,
             tuple(self.patch_embed.proj.weight.shape[-2:])), self.arch_zoo,
            checkpoint_path)

        # resized here so that the one log line below says so
        src_grid = None
        if 'pos_embed' in weights:
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

    # -------------------------------------------------------------- forward
    def forward(self, x):
        """x: (B, C, H, W) -> tuple with one output per out index."""
        tokens, grid = self.patch_embed(x)
        cls_tokens = [getattr(self, n).expand(tokens.shape[0], -1, -1)
                      for n in self.cls_token_names]
        stream = insert_cls_tokens(tokens, cls_tokens, self.cls_token_position)
        if self.pos_embed is not None:
            stream = stream + self._pos_embed_for(grid)
        stream = self.pos_drop(stream)
        stream = stream.float()  # the residual stream is kept in float32

        flipped = (self.training and self.sequence_flip_prob > 0
                   and torch.rand(()).item() < self.sequence_flip_prob)
        if flipped:  # Table 4 "bidirectional sequence"
            stream = stream.flip(1)
        outs = []

        def emit(i, out):
            if i == self.depth - 1 and self.final_norm:
                out = self.norm_f(out)
            outs.append(self._format_output(out.flip(1) if flipped else out,
                                            grid))

        if self.bidirectional == 'layers':
            for i in range(1, self.depth, 2):
                forward, backward = self.layers[i - 1], self.layers[i]
                stream = self._run(forward, stream) + self._run(
                    backward, stream.flip(1)).flip(1)
                if i in self.out_indices:
                    emit(i, stream)
        elif self.rope:
            rope = self._rope(grid, stream, flipped)
            stream = rope(stream)
            for i, layer in enumerate(self.layers):
                branch = self._run(layer.residual_branch, stream)
                if i in self.out_indices:
                    emit(i, stream + branch)
                if i == self.depth - 1:
                    break  # nothing follows the last layer
                # the reference rotates each layer's output (and with
                # rope_residual the residual) before the next layer adds it
                residual = rope(stream) if self.rope_residual else stream
                stream = residual + rope(branch)
        else:
            for i, layer in enumerate(self.layers):
                stream = self._run(layer, stream)
                if i in self.out_indices:
                    emit(i, stream)
        return tuple(outs)

    def _run(self, layer, stream):
        """layer(stream), checkpointed when with_cp and training."""
        if self.with_cp and self.training and stream.requires_grad:
            return cp.checkpoint(layer, stream, use_reentrant=False)
        return layer(stream)

    def _rope(self, grid, stream, flipped):
        """The reference's rotary embedding for this grid, in the original
        token order also when the sequence runs flipped."""
        cos, sin = rope_tables(grid, self.embed_dims, device=stream.device)

        def rope(s):
            if flipped:
                return apply_reference_rope(s.flip(1), cos, sin).flip(1)
            return apply_reference_rope(s, cos, sin)

        return rope

    def _format_output(self, x, grid):
        if self.out_type == 'raw':
            return x
        patches, cls_rows = split_cls_tokens(x, self.cls_token_position)
        if self.out_type == 'cls_token':
            return torch.stack(cls_rows).mean(0)[:, 0]
        if self.out_type == 'avg_featmap':
            return patches.mean(dim=1)
        return patches.reshape(x.shape[0], grid[0], grid[1],
                               -1).permute(0, 3, 1, 2).contiguous()
