import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvim.ops import (bi_selective_scan_ref, bimamba_inner, causal_conv1d,
                       select_scan_impl)


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
        divide_out (bool): halve the sum of the two directions.
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
                 divide_out=True):
        super().__init__()
        self.embed_dims = embed_dims
        self.d_state = d_state
        self.d_inner = expand * embed_dims
        self.dt_rank = (math.ceil(embed_dims / 16)
                        if dt_rank == 'auto' else int(dt_rank))
        self.divide_out = divide_out
        inner = self.d_inner

        self.in_proj = nn.Linear(embed_dims, 2 * inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dims, bias=bias)
        for suffix in ('', '_b'):
            conv = nn.Conv1d(inner, inner, d_conv, groups=inner,
                             padding=d_conv - 1, bias=conv_bias)
            x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
            dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
            # A = -exp(A_log) = -(1, 2, ..., N) per channel (S4D-real init)
            A_log = torch.log(
                torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(
                    inner, 1)
            setattr(self, 'conv1d' + suffix, conv)
            setattr(self, 'x_proj' + suffix, x_proj)
            setattr(self, 'dt_proj' + suffix, dt_proj)
            self.register_parameter('A' + suffix + '_log', nn.Parameter(A_log))
            self.register_parameter('D' + suffix,
                                    nn.Parameter(torch.ones(inner)))
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_dt_bias()

    @torch.no_grad()
    def reset_dt_bias(self):
        """dt_proj bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max]."""
        dt_min, dt_max, floor = self._dt_range
        for dt_proj in (self.dt_proj, self.dt_proj_b):
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

    def forward_reference(self, xz):
        """The readable path, pure PyTorch: xz (b, L, 2E) -> the gated
        (b, L, E) that out_proj takes, through the reference scan."""
        x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (b, E, L) each
        x_f = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, 'silu')
        x_b = causal_conv1d(x, self.conv1d_b.weight, self.conv1d_b.bias,
                            'silu', reverse=True)
        delta_f, B_f, C_f = self._ssm_inputs(x_f, self.x_proj, self.dt_proj)
        delta_b, B_b, C_b = self._ssm_inputs(x_b, self.x_proj_b,
                                             self.dt_proj_b)
        y = bi_selective_scan_ref(
            x_f, delta_f, -torch.exp(self.A_log.float()), B_f, C_f,
            self.D.float(), x_b, delta_b, -torch.exp(self.A_b_log.float()),
            B_b, C_b, self.D_b.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_bias_b=self.dt_proj_b.bias.float(),
            delta_softplus=True,
            divide_out=self.divide_out)
        return y.transpose(1, 2)
