import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, PatchEmbed, PatchMerging
from mmengine.logging import print_log
from mmengine.model import BaseModule, ModuleList
from mmengine.runner.checkpoint import CheckpointLoader
from torch.nn.modules.batchnorm import _BatchNorm

from mmvim.registry import MODELS
from ..layers import BiMambaMixer, DropPath
from .vim_checkpoint import checkpoint_state_dict


class HierVimBlock(BaseModule):
    """A Swin block with its window attention replaced by Vim's mixer.

    ``x = x + drop_path(mixer(LN(x)))``, then
    ``x = x + drop_path(FFN(LN(x)))``. The mixer is Vim's
    :class:`BiMambaMixer`, scanning all tokens of the stage in raster order,
    forward and backward (no windows, no shifts).

    Args:
        embed_dims (int): token width C of the stage.
        ffn_ratio (float): hidden width of the FFN is ``int(C * ffn_ratio)``.
        drop_path (float): stochastic-depth rate of both residual branches.
        norm_cfg (dict): norm of both branches.
        mixer_cfg (dict): keyword arguments of :class:`BiMambaMixer`.
    """

    def __init__(self, embed_dims, ffn_ratio=3.5, drop_path=0.,
                 norm_cfg=dict(type='LN'), mixer_cfg=None, init_cfg=None):
        super().__init__(init_cfg)
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.mixer = BiMambaMixer(embed_dims, **(mixer_cfg or {}))
        self.drop_path = DropPath(drop_path)
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = FFN(
            embed_dims=embed_dims,
            feedforward_channels=int(embed_dims * ffn_ratio),
            num_fcs=2,
            ffn_drop=0.,
            dropout_layer=dict(type='DropPath', drop_prob=drop_path),
            act_cfg=dict(type='GELU'))

    def forward(self, x):
        """x: (B, L, C) -> (B, L, C), L = H * W tokens in raster order."""
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return self.ffn(self.norm2(x), identity=x)


class HierVimStage(BaseModule):
    """``depth`` blocks at one resolution, then (except in the last stage)
    Swin's patch merging: 2x2 neighbours concatenated, LN, Linear(4C, 2C);
    an odd map is padded at its bottom / right first."""

    def __init__(self, embed_dims, depth, drop_paths, downsample,
                 ffn_ratio=3.5, norm_cfg=dict(type='LN'), mixer_cfg=None,
                 with_cp=False, init_cfg=None):
        super().__init__(init_cfg)
        self.embed_dims = embed_dims
        self.with_cp = with_cp
        self.blocks = ModuleList([
            HierVimBlock(embed_dims, ffn_ratio, drop_paths[i], norm_cfg,
                         mixer_cfg) for i in range(depth)
        ])
        self.downsample = PatchMerging(
            in_channels=embed_dims, out_channels=2 * embed_dims,
            norm_cfg=norm_cfg) if downsample else None

    def forward(self, x):
        for block in self.blocks:
            if self.with_cp and self.training and x.requires_grad:
                # per block, as Swin's with_cp: its activations are
                # recomputed in the backward (the RNG state replayed)
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


@MODELS.register_module()
class HierVim(BaseModule):
    """Hier-Vim: Swin Transformer with its shifted-window attention replaced
    by Vim's global bidirectional Mamba mixer (Vision Mamba, arXiv
    2401.09417, appendix C; the authors released no code or weights).

    Image -> Swin patch embedding (4x4 conv, stride 4, LN) -> four stages of
    :class:`HierVimBlock` at strides 4, 8, 16, 32 with widths C, 2C, 4C, 8C,
    Swin's patch merging between them -> per-stage LN on the returned maps.
    With ``GlobalAveragePooling`` + ``LinearClsHead`` it is the classifier of
    the paper's Table (Swin's head).

    Where the paper names the design it is followed: blocks per stage and
    widths (tiny 2-2-5-2 / 96, small 2-2-15-2 / 96, base 2-2-15-2 / 128),
    Swin's patch embedding and merging, and Vim's bidirectional mixer in
    every block, global over all tokens of the stage. Where it is silent,
    the choice reaches its parameter counts (30M / 50M / 89M with a
    1000-class head) and keeps "Swin with the attention replaced":

    - mixer: Vim's :class:`BiMambaMixer` unchanged (expand 2, N 16, dt rank
      ceil(C / 16), conv 4): 6.5 C^2 + 220 C parameters, against the 4 C^2 +
      4 C of the attention it replaces.
    - feed-forward: Swin's two-layer GELU MLP, kept; its ratio is 3.5, not
      Swin's 4. Ratio 4 counts 32.4M / 54.6M / 96.0M (+7.9 / +9.3 / +7.9%),
      no FFN 16.3M / 26.7M / 46.4M; every 0.5 of ratio moves the counts by
      2.0M / 3.5M / 6.2M, so 3.5 (30.4M / 51.1M / 89.8M: +1.2 / +2.3 /
      +0.9%) is the largest half-step ratio within 3% of all three, and it
      leaves every hidden width a multiple of 16. (The paper's cut of stage 3
      from Swin's 6 / 18 blocks to 5 / 15 says the same: a 14.5 C^2 block
      against Swin's 12 C^2.) Dropping the FFN and widening the mixer to
      expand 4 also lands near (30.2M / 51.1M / 88.9M) but is no longer a
      Swin block.
    - norms: Swin's LayerNorm (pre-norm in both branches, patch embedding,
      merging, stage outputs); RMSNorm would save C per norm (0.03M for T).
    - position embedding: none, as Swin-T/S/B (``use_abs_pos_embed=False``):
      Swin's only positional term, the relative bias, lives inside the
      attention that is replaced, and the scans' order and causal depthwise
      convs make the mixer position-aware. An absolute embedding at 224 would
      add 0.30M (T) and tie the model to one resolution.
    - token order: the (H, W) map flattened row by row (raster order, as Vim
      and Swin's patch embedding flatten it); the mixer's backward branch
      scans the same sequence from the end, so every token sees the whole
      map in both directions. No class token (Swin pools).
    - initialisation: Swin's for what Swin has (trunc-normal 0.02 linears,
      zero biases, LN 1 / 0), Mamba's own for the SSM (dt_proj, A_log, D,
      depthwise convs). The residual stream is kept in float32 under
      autocast, as Vim's.

    Args:
        arch (str | dict): 'tiny'/'t', 'small'/'s', 'base'/'b', or a dict
            with ``embed_dims`` and ``depths`` (4 stages; optionally
            ``ffn_ratio``, ``d_state``, ``expand``).
        patch_size (int): patch-embedding kernel and stride.
        in_channels (int): image channels.
        out_indices (Sequence[int]): stages whose (normed) maps are returned.
        drop_rate (float): dropout after the patch embedding.
        drop_path_rate (float): stochastic depth, linear over all blocks.
        frozen_stages (int): freeze the patch embedding and stages
            ``0..frozen_stages`` (with their output norms); -1: none.
        norm_eval (bool): keep BatchNorm layers (of a user's ``norm_cfg``) in
            eval mode while training.
        norm_cfg (dict): norm of the blocks, merging and outputs.
        mixer_cfg (dict): extra arguments of :class:`BiMambaMixer`.
        with_cp (bool): activation checkpointing per block in training:
            each block's activations are recomputed in the backward instead
            of kept (less memory, one more forward of each block).
        init_cfg (dict): ``dict(type='Pretrained', checkpoint=PATH)`` loads
            the backbone of a Hier-Vim classifier trained with mmvim (head
            dropped; output norms the checkpoint lacks keep their init).
    """
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], {'embed_dims': 96,
                                        'depths': (2, 2, 5, 2)}),
        **dict.fromkeys(['s', 'small'], {'embed_dims': 96,
                                         'depths': (2, 2, 15, 2)}),
        **dict.fromkeys(['b', 'base'], {'embed_dims': 128,
                                        'depths': (2, 2, 15, 2)}),
    }
    ARCH_KEYS = ('embed_dims', 'depths', 'ffn_ratio', 'd_state', 'expand')
    FFN_RATIO = 3.5

    def __init__(self,
                 arch='tiny',
                 patch_size=4,
                 in_channels=3,
                 out_indices=(3, ),
                 drop_rate=0.,
                 drop_path_rate=0.2,
                 frozen_stages=-1,
                 norm_eval=False,
                 norm_cfg=dict(type='LN'),
                 mixer_cfg=None,
                 with_cp=False,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        self.embed_dims = arch['embed_dims']
        self.with_cp = with_cp
        self.depths = tuple(arch['depths'])
        self.ffn_ratio = arch.get('ffn_ratio', self.FFN_RATIO)
        mixer_cfg = dict(mixer_cfg or {})
        for key in ('d_state', 'expand'):
            if key in arch:
                mixer_cfg.setdefault(key, arch[key])
        self.num_features = [self.embed_dims * 2**i
                             for i in range(len(self.depths))]
        self.out_indices = self._parse_out_indices(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self.patch_embed = PatchEmbed(
            in_channels=in_channels, embed_dims=self.embed_dims,
            conv_type='Conv2d', kernel_size=patch_size, stride=patch_size,
            norm_cfg=norm_cfg)
        self.drop_after_embed = nn.Dropout(p=drop_rate)

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.stages = ModuleList()
        for i, depth in enumerate(self.depths):
            start = sum(self.depths[:i])
            self.stages.append(HierVimStage(
                self.num_features[i], depth, dpr[start:start + depth],
                downsample=i < len(self.depths) - 1,
                ffn_ratio=self.ffn_ratio, norm_cfg=norm_cfg,
                mixer_cfg=mixer_cfg, with_cp=with_cp))
        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm_layer(
                norm_cfg, self.num_features[i])[1])

        self._init_swin_weights()
        self._freeze_stages()

    # ---------------------------------------------------------- construction
    def _parse_arch(self, arch):
        if isinstance(arch, str):
            key = arch.lower()
            if key not in self.arch_zoo:
                raise ValueError(
                    f"unknown arch '{arch}', choose from "
                    f"{', '.join(sorted(set(self.arch_zoo)))} or give a dict "
                    'with embed_dims and depths')
            return dict(self.arch_zoo[key])
        if not isinstance(arch, dict) or \
                not {'embed_dims', 'depths'} <= set(arch):
            raise ValueError('a custom arch must be a dict with the keys '
                             f"'embed_dims' and 'depths', got {arch!r}")
        unknown = set(arch) - set(self.ARCH_KEYS)
        if unknown:
            raise ValueError(f'unknown arch keys {sorted(unknown)}; allowed: '
                             f"{', '.join(self.ARCH_KEYS)}")
        return dict(arch)

    def _parse_out_indices(self, out_indices):
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        num_stages = len(self.depths)
        parsed = []
        for index in out_indices:
            if not -num_stages <= index < num_stages:
                raise ValueError(
                    f'out index {index} is out of range for a {num_stages}-'
                    f'stage Hier-Vim (use 0..{num_stages - 1} or negative '
                    'indices)')
            parsed.append(index % num_stages)
        return tuple(sorted(set(parsed)))

    @torch.no_grad()
    def _init_swin_weights(self):
        """Swin's init for the linears and norms; the mixer's SSM-specific
        parameters (dt_proj's weight and bias, A_log, D, depthwise convs)
        keep Mamba's own init from :class:`BiMambaMixer`."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and 'dt_proj' not in name:
                nn.init.trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_layer_depth(self, param_name, prefix=''):
        """(layer depth, number of depths) of a parameter for layer-wise lr
        decay, as mmpretrain's Swin: patch_embed 0, block j of stage i
        sum(depths[:i]) + j + 1, stage i's patch merging with its last
        block, sum(depths[:i + 1]); everything else (output norms, necks,
        heads) sum(depths) + 1, of sum(depths) + 2 in all."""
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name.startswith('patch_embed.'):
            return 0, num_layers
        if name.startswith('stages.'):
            parts = name.split('.')
            stage = int(parts[1])
            if parts[2] == 'downsample':
                return sum(self.depths[:stage + 1]), num_layers
            return sum(self.depths[:stage]) + int(parts[3]) + 1, num_layers
        return num_layers - 1, num_layers

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed, self.drop_after_embed]
        frozen += list(self.stages[:self.frozen_stages + 1])
        frozen += [getattr(self, f'norm{i}') for i in self.out_indices
                   if i <= self.frozen_stages]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

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
        """Load the backbone of an mmvim Hier-Vim checkpoint (a classifier's
        ``backbone.*`` keys, or a bare backbone state dict)."""
        checkpoint = CheckpointLoader.load_checkpoint(
            checkpoint_path, map_location='cpu', logger='current')
        state = checkpoint_state_dict(checkpoint, use_ema)
        if any(k.startswith('backbone.') for k in state):
            weights = {k[len('backbone.'):]: v for k, v in state.items()
                       if k.startswith('backbone.')}
            dropped = sorted({k.split('.')[0] for k in state
                              if not k.startswith('backbone.')})
        else:
            weights, dropped = dict(state), []
        own = self.state_dict()
        output_norm = tuple(f'norm{i}.' for i in range(len(self.depths)))
        # a classifier has only its last stage's output norm: the dense
        # task's other output norms start from their init
        kept_init = sorted({k.split('.')[0] for k in own
                            if k not in weights and k.startswith(output_norm)})
        extra_norms = sorted({k.split('.')[0] for k in weights
                              if k not in own and k.startswith(output_norm)})
        weights = {k: v for k, v in weights.items()
                   if not (k not in own and k.startswith(output_norm))}
        missing = [k for k in own if k not in weights
                   and not k.startswith(output_norm)]
        unexpected = [k for k in weights if k not in own]
        mismatched = [f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}'
                      for k, v in weights.items()
                      if k in own and v.shape != own[k].shape]
        if missing or unexpected or mismatched:
            problems = []
            for title, keys in (('missing', missing),
                                ('unexpected', unexpected),
                                ('shape mismatch (checkpoint vs model)',
                                 mismatched)):
                if keys:
                    shown = ', '.join(keys[:6]) + (' ...' if len(keys) > 6
                                                   else '')
                    problems.append(f'{title} ({len(keys)}): {shown}')
            raise ValueError(
                f'{checkpoint_path} does not fit this Hier-Vim backbone '
                f'(embed_dims={self.embed_dims}, depths={self.depths}); '
                + '; '.join(problems) + '. Likely cause: the checkpoint is '
                "another arch or not a Hier-Vim; set arch to match it")
        self.load_state_dict(weights, strict=False)
        print_log(
            f'Loaded Hier-Vim backbone from {checkpoint_path}: '
            f'{len(weights)} tensors, dropped '
            f"{', '.join(dropped + extra_norms) or 'nothing'}; output norms "
            f"kept at init: {', '.join(kept_init) or 'none'}",
            logger='current')

    # -------------------------------------------------------------- forward
    @staticmethod
    def _full_precision(x):
        """float32 for half-precision x (autocast), float64 stays."""
        return x.to(torch.promote_types(x.dtype, torch.float32))

    def forward(self, x):
        """x: (B, C_in, H, W), any H, W -> one (B, C_i, H_i, W_i) map per out
        index, H_i = ceil(H / 4 / 2^i) (odd maps are padded, as Swin)."""
        x, hw = self.patch_embed(x)
        # the residual stream is kept in float32, as Vim's
        x = self._full_precision(self.drop_after_embed(x))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out.reshape(-1, *hw, self.num_features[i])
                            .permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x, hw = stage.downsample(x, hw)
                x = self._full_precision(x)
        return tuple(outs)
