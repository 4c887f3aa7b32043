"""The inner part of Vim's bidirectional Mamba mixer as one autograd
function over the compiled scan kernels, token-major end to end.

From ``xz`` (b, L, 2E), the output of the mixer's in_proj, to the gated
``(y_fwd + y_bwd) / 2 * silu(z)`` (b, L, E) that its out_proj takes:

    x, z = xz[..., :E], xz[..., E:]               (views)
    for each direction (the second scans right to left):
        u = silu(depthwise conv(x))               causal / anti-causal
        dt, B, C = split(x_proj(u))               (b, L, R), (b, L, N) x 2
        delta = dt_proj(dt)                       bias added in the scan
    y = scan of both directions, with the gate

The kernel reads x, z (halves of xz), B, C (slices of x_proj's output) and
delta where they are and computes the conv again itself, so u is used only
to feed x_proj and then freed: the function saves xz and the scan's tile
states for backward, nothing else of size b * L * E. The backward
recomputes u, delta, B and C (the conv and two thin matmuls) and takes the
gradients of that part with autograd.
"""
import torch
import torch.nn.functional as F

from .causal_conv1d import causal_conv1d_silu_tokens
from .selective_scan_kernel import compute_dtypes, kernel_module

# per direction: conv weight, conv bias, x_proj weight, dt_proj weight,
# dt_proj bias, A_log, D
PARAMS_PER_DIRECTION = 7


def _prepare(x, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
             dt_rank, d_state, reverse, kind):
    """(u, x_dbl, delta) of one direction; x: (b, L, E) token-major; the
    conv + SiLU in one pass of the kernel ``kind``."""
    u = causal_conv1d_silu_tokens(x, conv_weight, conv_bias, reverse, kind)
    x_dbl = F.linear(u, x_proj_weight)  # (b, L, R + 2N)
    delta = F.linear(x_dbl[..., :dt_rank], dt_proj_weight)  # (b, L, E)
    return u, x_dbl, delta


def _kernel_direction(x, x_dbl, delta, params, dt_rank, d_state, data,
                      weight):
    """The kernel's list [x, conv_w, conv_b, delta, A, B, C, D, bias]."""
    conv_w, conv_b, _, _, dt_bias, A_log, D = params
    B = x_dbl[..., dt_rank:dt_rank + d_state].unsqueeze(2)  # (b, L, 1, N)
    C = x_dbl[..., dt_rank + d_state:].unsqueeze(2)
    bc = data if x_dbl.dtype == data else weight
    return [x.to(data), conv_w.reshape(conv_w.shape[0], -1).to(weight),
            None if conv_b is None else conv_b.to(weight), delta.to(data),
            -torch.exp(A_log.to(weight)), B.to(bc), C.to(bc), D.to(weight),
            dt_bias.to(weight)]


def _autocast_state(device_type):
    return (torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type))


class BiMambaInnerFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, xz, dt_rank, d_state, divide_out, kind, *params):
        dim = xz.shape[-1] // 2
        x, z = xz[..., :dim], xz[..., dim:]
        data, weight = compute_dtypes(kind, xz)
        directions = []
        for k in range(2):
            p = params[PARAMS_PER_DIRECTION * k:PARAMS_PER_DIRECTION * (k + 1)]
            _, x_dbl, delta = _prepare(x, p[0], p[1], p[2], p[3], dt_rank,
                                       d_state, k == 1, kind)
            directions.append(_kernel_direction(x, x_dbl, delta, p, dt_rank,
                                                d_state, data, weight))
        scale = 0.5 if divide_out else 1.0
        out, states, _ = kernel_module(kind).scan_fwd(
            directions, [False, True], z.to(data), True, scale, False)
        ctx.save_for_backward(xz, states, *params)
        ctx.options = dict(dt_rank=dt_rank, d_state=d_state, scale=scale,
                           kind=kind,
                           autocast=_autocast_state(xz.device.type))
        return out.to(xz.dtype)

    @staticmethod
    def backward(ctx, dout):
        xz, states, *params = ctx.saved_tensors
        opts = ctx.options
        dt_rank, d_state = opts['dt_rank'], opts['d_state']
        dim = xz.shape[-1] // 2
        data, weight = compute_dtypes(opts['kind'], xz)
        x = xz[..., :dim].detach().requires_grad_(True)
        z = xz[..., dim:]
        enabled, dtype = opts['autocast']
        # the forward's x_proj / dt_proj part again, with autograd, under
        # the forward's autocast
        with torch.enable_grad(), torch.autocast(xz.device.type, dtype,
                                                 enabled=enabled):
            prepared = []
            for k in range(2):
                p = params[PARAMS_PER_DIRECTION * k:
                           PARAMS_PER_DIRECTION * (k + 1)]
                prepared.append(_prepare(x, p[0], p[1], p[2], p[3], dt_rank,
                                         d_state, k == 1, opts['kind']))
        directions = []
        for k, (_, x_dbl, delta) in enumerate(prepared):
            p = params[PARAMS_PER_DIRECTION * k:PARAMS_PER_DIRECTION * (k + 1)]
            directions.append(_kernel_direction(
                x.detach(), x_dbl.detach(), delta.detach(), p, dt_rank,
                d_state, data, weight))
        *grads, dz = kernel_module(opts['kind']).scan_bwd(
            directions, [False, True], z.to(data),
            dout.to(data).contiguous(), states, True, opts['scale'])
        # back through u, x_proj and dt_proj with autograd
        outputs, grad_outputs, inputs = [], [], [x]
        param_grads = [None] * len(params)
        for k, (u, x_dbl, delta) in enumerate(prepared):
            du, ddelta, dA, dB, dC, dD, dbias = grads[7 * k:7 * k + 7]
            base = PARAMS_PER_DIRECTION * k
            conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D = \
                params[base:base + PARAMS_PER_DIRECTION]
            dx_dbl = torch.cat([torch.zeros_like(x_dbl[..., :dt_rank]),
                                dB.squeeze(2).to(x_dbl.dtype),
                                dC.squeeze(2).to(x_dbl.dtype)], dim=-1)
            outputs += [u, x_dbl, delta]
            grad_outputs += [du.to(u.dtype), dx_dbl, ddelta.to(delta.dtype)]
            inputs += [p for p in (conv_w, conv_b, x_proj_w, dt_proj_w)
                       if p is not None]
            # A = -exp(A_log): dA_log = dA * A
            param_grads[base + 5] = (dA * -torch.exp(A_log.float())).to(
                A_log.dtype)
            param_grads[base + 6] = dD.to(D.dtype)
            param_grads[base + 4] = dbias.to(dt_bias.dtype)
        found = torch.autograd.grad(outputs, inputs, grad_outputs,
                                    allow_unused=True)
        dx, found = found[0], list(found[1:])
        for k in range(2):
            base = PARAMS_PER_DIRECTION * k
            for i in range(4):
                if params[base + i] is not None:
                    param_grads[base + i] = found.pop(0)
        dxz = torch.cat([dx.to(xz.dtype), dz.to(xz.dtype)], dim=-1)
        return (dxz, None, None, None, None, *param_grads)


def bimamba_inner(xz, forward_params, backward_params, dt_rank, d_state,
                  divide_out=True, kind='cpu'):
    """The mixer between in_proj and out_proj on the compiled kernel
    ``kind``.

    Args:
        xz: (b, L, 2E), in_proj's output.
        forward_params, backward_params: per direction (conv weight (E, 1,
            K), conv bias (E,) or None, x_proj weight (R + 2N, E), dt_proj
            weight (E, R), dt_proj bias (E,), A_log (E, N), D (E,)).
        dt_rank, d_state: R and N.

    Returns:
        (b, L, E) in xz's dtype: ``(y_fwd + y_bwd) * silu(z)``, halved when
        ``divide_out``.
    """
    return BiMambaInnerFn.apply(xz, dt_rank, d_state, divide_out, kind,
                                *forward_params, *backward_params)
