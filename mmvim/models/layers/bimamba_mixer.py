import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvim.ops import (bi_selective_scan, bi_selective_scan_onnx,
                       bi_selective_scan_ref, bimamba_inner, causal_conv1d,
                       select_scan_impl, selective_scan,
                       selective_scan_onnx)

# the mixer's ``bidirectional`` options: the released Vim ('ssm_conv', the
# reference's bimamba v2), the backward SSM sharing the forward conv and
# projections ('ssm', bimamba v1), and the unidirectional Mamba ('none')
MIXER_DIRECTIONS = ('ssm_conv', 'ssm', 'none')


class BiMambaMixer(nn.Module):
    """The bidirectional Mamba token mixer of Vim ("bimamba v2").

    ``x, z = in_proj(h)``; the forward branch runs a causal depthwise conv, a
    selective scan from the first token to the last; the backward branch has
    its own parameters (``conv1d_b``, ``x_proj_b``, ``dt_proj_b``,
    ``A_b_log``, ``D_b``) and runs an anti-causal conv and a scan from the
    last token to the first, both in the original token order (no flips).
    ``out = out_proj((y_fwd + y_bwd) / 2 * silu(z))``. Parameter names are
    those of the released checkpoints.

    Args:
        embed_dims (int): token width D.
        d_state (int): SSM state size N.
        d_conv (int): depthwise conv width.
        expand (int): inner width E = expand * D.
        dt_rank (int | str): rank R of delta; 'auto' = ceil(D / 16).
        dt_min, dt_max, dt_init_floor (float): range of the initial delta.
        conv_bias (bool): bias in the depthwise convs.
        bias (bool): bias in in_proj / out_proj.
        divide_out (bool): halve the sum of the two directions (only for
            'ssm_conv', as the reference's ``if_divide_out``).
        bidirectional (str): 'ssm_conv' (the above, the released models;
            paper Table 4 "Bidirectional SSM + Conv1d"); 'ssm' (Table 4
            "Bidirectional SSM", the reference's bimamba v1: one causal conv,
            x_proj, dt_proj and D shared, only ``A_b_log`` of its own; the
            backward scan runs right to left over the same inputs and
            ``out = out_proj((y_fwd + y_bwd) * silu(z))``, never halved);
            'none' (Mamba's unidirectional mixer, Table 4 "None":
            ``out_proj(y_fwd * silu(z))``, no ``*_b`` parameters).

    Attributes:
        onnx_scan (bool): False (default): the scans run on the compiled
            kernel of the device (or the reference); True: as
            :func:`selective_scan_onnx`, one ``scan`` over the tokens that
            the ONNX exporter writes as the standard ``Scan`` operator (set
            on a model being exported, see
            :func:`mmvim.deployment.prepare_for_onnx_export`).
    """

    def __init__(self,
                 embed_dims,
                 d_state=16,
                 d_conv=4,
                 expand=2,
                 dt_rank='auto',
                 dt_min=1e-3,
                 dt_max=1e-1,
                 dt_init_floor=1e-4,
                 conv_bias=True,
                 bias=False,
                 divide_out=True,
                 bidirectional='ssm_conv'):
        super().__init__()
        if bidirectional not in MIXER_DIRECTIONS:
            raise ValueError(f'unknown bidirectional={bidirectional!r} for '
                             f'the mixer, choose from {MIXER_DIRECTIONS}')
        self.bidirectional = bidirectional
        self.embed_dims = embed_dims
        self.d_state = d_state
        self.d_inner = expand * embed_dims
        self.dt_rank = (math.ceil(embed_dims / 16)
                        if dt_rank == 'auto' else int(dt_rank))
        self.divide_out = divide_out
        inner = self.d_inner

        self.in_proj = nn.Linear(embed_dims, 2 * inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dims, bias=bias)
        # A = -exp(A_log) = -(1, 2, ..., N) per channel (S4D-real init)
        A_log = torch.log(torch.arange(1, d_state + 1,
                                       dtype=torch.float32)).repeat(inner, 1)
        suffixes = ('', '_b') if bidirectional == 'ssm_conv' else ('', )
        for suffix in suffixes:
            conv = nn.Conv1d(inner, inner, d_conv, groups=inner,
                             padding=d_conv - 1, bias=conv_bias)
            x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
            dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
            setattr(self, 'conv1d' + suffix, conv)
            setattr(self, 'x_proj' + suffix, x_proj)
            setattr(self, 'dt_proj' + suffix, dt_proj)
            self.register_parameter('A' + suffix + '_log',
                                    nn.Parameter(A_log.clone()))
            self.register_parameter('D' + suffix,
                                    nn.Parameter(torch.ones(inner)))
        if bidirectional == 'ssm':
            self.A_b_log = nn.Parameter(A_log.clone())
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_dt_parameters()
        self.onnx_scan = False

    def _dt_projs(self):
        return [self.dt_proj] + ([self.dt_proj_b] if hasattr(
            self, 'dt_proj_b') else [])

    @torch.no_grad()
    def reset_dt_parameters(self):
        """Mamba's dt_proj init: weight uniform in +-dt_rank^-0.5, bias =
        softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (floored)."""
        dt_min, dt_max, floor = self._dt_range
        for dt_proj in self._dt_projs():
            bound = self.dt_rank**-0.5
            nn.init.uniform_(dt_proj.weight, -bound, bound)
            dt = torch.exp(
                torch.rand(self.d_inner) *
                (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _direction_params(self, suffix):
        """What :func:`bimamba_inner` takes of one direction."""
        conv = getattr(self, 'conv1d' + suffix)
        dt_proj = getattr(self, 'dt_proj' + suffix)
        return (conv.weight, conv.bias,
                getattr(self, 'x_proj' + suffix).weight, dt_proj.weight,
                dt_proj.bias,
                getattr(self, 'A' + suffix + '_log'),
                getattr(self, 'D' + suffix))

    def forward(self, hidden):
        """hidden: (b, L, D) -> (b, L, D)."""
        xz = self.in_proj(hidden)  # (b, L, 2E), token-major throughout
        if self.bidirectional != 'ssm_conv':
            return self.out_proj(self._forward_shared_conv(xz))
        if self.onnx_scan:
            return self.out_proj(
                self._forward_own_convs(xz, bi_selective_scan_onnx))
        impl = select_scan_impl(xz.device)
        if impl == 'ref':
            y = self.forward_reference(xz)
        else:
            y = bimamba_inner(xz, self._direction_params(''),
                              self._direction_params('_b'), self.dt_rank,
                              self.d_state, self.divide_out, kind=impl)
        return self.out_proj(y)

    def _ssm_inputs(self, x, x_proj, dt_proj):
        """x: (b, E, L) -> delta (b, E, L), B (b, N, L), C (b, N, L)."""
        x_dbl = F.linear(x.transpose(1, 2), x_proj.weight)  # (b, L, R+2N)
        dt, B, C = x_dbl.split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj's bias is added (with softplus) inside the scan
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)
        return (delta, B.transpose(1, 2).contiguous(),
                C.transpose(1, 2).contiguous())

    def _forward_shared_conv(self, xz):
        """'ssm' and 'none': one causal conv and one set of projections;
        xz (b, L, 2E) -> the gated (b, L, E) that out_proj takes."""
        x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (b, E, L) each
        u = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, 'silu')
        delta, B, C = self._ssm_inputs(u, self.x_proj, self.dt_proj)
        A, D = -torch.exp(self.A_log.float()), self.D.float()
        bias = self.dt_proj.bias.float()
        scan, bi_scan = ((selective_scan_onnx, bi_selective_scan_onnx)
                         if self.onnx_scan else
                         (selective_scan, bi_selective_scan))
        if self.bidirectional == 'none':
            y = scan(u, delta, A, B, C, D, z=z, delta_bias=bias,
                     delta_softplus=True)
        else:  # the backward scan reads the same inputs right to left
            y = bi_scan(u, delta, A, B, C, D, u, delta,
                        -torch.exp(self.A_b_log.float()), B, C, D, z=z,
                        delta_bias=bias, delta_bias_b=bias,
                        delta_softplus=True, divide_out=False)
        return y.transpose(1, 2)

    def forward_reference(self, xz):
        """The readable path, pure PyTorch: xz (b, L, 2E) -> the gated
        (b, L, E) that out_proj takes, through the reference scan."""
        return self._forward_own_convs(xz, bi_selective_scan_ref)

    def _forward_own_convs(self, xz, bi_scan):
        """'ssm_conv' in PyTorch, each direction with its conv and
        projections, the scans by ``bi_scan`` (a :func:`bi_selective_scan_ref`
        alike): xz (b, L, 2E) -> the gated (b, L, E) that out_proj takes."""
        x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (b, E, L) each
        x_f = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, 'silu')
        x_b = causal_conv1d(x, self.conv1d_b.weight, self.conv1d_b.bias,
                            'silu', reverse=True)
        delta_f, B_f, C_f = self._ssm_inputs(x_f, self.x_proj, self.dt_proj)
        delta_b, B_b, C_b = self._ssm_inputs(x_b, self.x_proj_b,
                                             self.dt_proj_b)
        y = bi_scan(
            x_f, delta_f, -torch.exp(self.A_log.float()), B_f, C_f,
            self.D.float(), x_b, delta_b, -torch.exp(self.A_b_log.float()),
            B_b, C_b, self.D_b.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_bias_b=self.dt_proj_b.bias.float(),
            delta_softplus=True,
            divide_out=self.divide_out)
        return y.transpose(1, 2)
