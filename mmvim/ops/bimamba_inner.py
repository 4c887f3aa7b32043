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

The kernel reads z (half of xz), B, C (slices of x_proj's output) and
delta where they are; the CUDA kernel reads x too and computes the conv
again itself, the CPU kernel reads u. Either way u is freed after the
forward: the operator saves xz and the scan's tile states for backward,
nothing else of size b * L * E. Its backward recomputes
u, delta, B and C (the conv and two thin matmuls) and differentiates that
part by explicit formulas (no autograd inside a backward, so that
``torch.compile`` and ``torch.export`` trace it).

The function is the operator ``torch.ops.mmvim.bimamba_inner`` (defined
with ``torch.library.custom_op`` when a kernel is first built), with a fake
implementation and its autograd formula registered.
"""
import torch
import torch.nn.functional as F

from .causal_conv1d import causal_conv1d_silu_tokens, conv_silu_backward
from .selective_scan_kernel import compute_dtypes, kernel_module, kernel_ops

# per direction: conv weight, conv bias, x_proj weight, dt_proj weight,
# dt_proj bias, A_log, D
PARAMS_PER_DIRECTION = 7
OP_NAME = 'mmvim::bimamba_inner'
# kernels that compute the depthwise conv + SiLU again from x rather than
# reading u: on a GPU that saves a pass over u; on the CPU computing it
# twice costs more than reading it (about 2 ms of a 56 ms Vim-Ti forward)
FUSED_CONV_KINDS = ('cuda', 'simt')


def _prepare(x, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
             dt_rank, reverse, kind):
    """(u, x_dbl, delta) of one direction; x: (b, L, E) token-major; the
    conv + SiLU in one pass of the kernel ``kind``."""
    u = causal_conv1d_silu_tokens(x, conv_weight, conv_bias, reverse, kind)
    x_dbl = F.linear(u, x_proj_weight)  # (b, L, R + 2N)
    delta = F.linear(x_dbl[..., :dt_rank], dt_proj_weight)  # (b, L, E)
    return u, x_dbl, delta


def _kernel_direction(x, u, x_dbl, delta, params, dt_rank, d_state, data,
                      weight, kind):
    """The kernel's list [x, conv_w, conv_b, delta, A, B, C, D, bias]: x
    and the conv for the kernels that fuse it (``FUSED_CONV_KINDS``), else
    u, the conv's output, which x_proj needed anyway, and no conv."""
    conv_w, conv_b, _, _, dt_bias, A_log, D = params
    B = x_dbl[..., dt_rank:dt_rank + d_state].unsqueeze(2)  # (b, L, 1, N)
    C = x_dbl[..., dt_rank + d_state:].unsqueeze(2)
    bc = data if x_dbl.dtype == data else weight
    if kind in FUSED_CONV_KINDS:
        conv = [x.to(data), conv_w.reshape(conv_w.shape[0], -1).to(weight),
                None if conv_b is None else conv_b.to(weight)]
    else:
        conv = [u.to(data), None, None]
    return conv + [delta.to(data), -torch.exp(A_log.to(weight)), B.to(bc),
                   C.to(bc), D.to(weight), dt_bias.to(weight)]


def _directions(params):
    n = PARAMS_PER_DIRECTION
    return [params[:n], params[n:2 * n]]


def _forward(xz, params, dt_rank, d_state, scale, kind):
    """(out (b, L, E) in xz's dtype, the scan's states): :func:`_compose`,
    which the CPU extension also has in C++ (``mixer_forward``, the same
    ops in one call)."""
    if kind == 'cpu':
        out, states = kernel_module(kind).mixer_forward(
            xz, params, dt_rank, d_state, scale)
        return out, states
    return _compose(xz, params, dt_rank, d_state, scale, kind)


def _compose(xz, params, dt_rank, d_state, scale, kind):
    """The forward in Python: the input side of each direction
    (:func:`_prepare`), then one scan of both with the gate."""
    dim = xz.shape[-1] // 2
    x, z = xz[..., :dim], xz[..., dim:]
    data, weight = compute_dtypes(kind, xz)
    kernel_dirs = []
    for k, p in enumerate(_directions(params)):
        u, x_dbl, delta = _prepare(x, p[0], p[1], p[2], p[3], dt_rank, k == 1,
                                   kind)
        kernel_dirs += _kernel_direction(x, u, x_dbl, delta, p, dt_rank,
                                         d_state, data, weight, kind)
    out, states, _ = kernel_ops(kind).scan_fwd(*kernel_dirs, z.to(data),
                                               False, True, scale, False)
    return out.to(xz.dtype), states


def _fake(xz, params, dt_rank, d_state, scale, kind):
    batch, length, dim2 = xz.shape
    x = xz.new_empty((batch, length, dim2 // 2))
    data, weight = compute_dtypes(kind, xz)
    p = params[:PARAMS_PER_DIRECTION]
    kernel_dirs = [x.to(data), p[0].reshape(p[0].shape[0], -1), p[1],
                   x.to(data), p[5].to(weight),
                   xz.new_empty((batch, length, 1, d_state), dtype=data),
                   xz.new_empty((batch, length, 1, d_state), dtype=data),
                   p[6], p[4]] * 2
    out, states, _ = kernel_ops(kind).scan_fwd(*kernel_dirs, x.to(data),
                                               False, True, scale, False)
    return out.to(xz.dtype), states


def _setup_context(ctx, inputs, output):
    xz, params, dt_rank, d_state, scale, kind = inputs
    _, states = output
    ctx.mark_non_differentiable(states)
    ctx.save_for_backward(xz, states, *params)
    device = xz.device.type
    ctx.options = dict(dt_rank=dt_rank, d_state=d_state, scale=scale,
                       kind=kind,
                       autocast=(torch.is_autocast_enabled(device),
                                 torch.get_autocast_dtype(device)))


def _linear_grads(dy, x, weight):
    """y = x @ weight.T: (dx, dweight) for dy, in dy's compute dtype."""
    return dy @ weight.to(dy.dtype), (dy.flatten(0, -2).T @ x.to(
        dy.dtype).flatten(0, -2))


def _backward(ctx, dout, dstates):
    xz, states, *params = ctx.saved_tensors
    opts = ctx.options
    dt_rank, d_state, kind = opts['dt_rank'], opts['d_state'], opts['kind']
    dim = xz.shape[-1] // 2
    x, z = xz[..., :dim], xz[..., dim:]
    data, weight = compute_dtypes(kind, xz)
    enabled, autocast_dtype = opts['autocast']
    # the forward's input side again, under the forward's autocast
    with torch.autocast(xz.device.type, autocast_dtype, enabled=enabled):
        prepared = [
            _prepare(x, p[0], p[1], p[2], p[3], dt_rank, k == 1, kind)
            for k, p in enumerate(_directions(params))
        ]
    kernel_dirs = []
    for (u, x_dbl, delta), p in zip(prepared, _directions(params)):
        kernel_dirs += _kernel_direction(x, u, x_dbl, delta, p, dt_rank,
                                         d_state, data, weight, kind)
    *grads, dz = kernel_ops(kind).scan_bwd(
        *kernel_dirs, z.to(data), dout.to(data).contiguous(), states, False,
        True, opts['scale'])
    dx = torch.zeros_like(x, dtype=torch.promote_types(x.dtype,
                                                       torch.float32))
    param_grads = []
    for k, ((u, x_dbl, delta), p) in enumerate(
            zip(prepared, _directions(params))):
        du, ddelta, dA, dB, dC, dD, dbias = grads[7 * k:7 * k + 7]
        conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D = p
        compute = x_dbl.dtype  # what the forward's matmuls ran in
        # delta = dt @ dt_proj.T, dt = x_dbl[..., :R]
        d_dt, d_dt_proj = _linear_grads(ddelta.to(compute),
                                        x_dbl[..., :dt_rank], dt_proj_w)
        dx_dbl = torch.cat([d_dt, dB.squeeze(2).to(compute),
                            dC.squeeze(2).to(compute)], dim=-1)
        # x_dbl = u @ x_proj.T; the scan's own du adds to u's gradient
        du_proj, d_x_proj = _linear_grads(dx_dbl, u, x_proj_w)
        dx_k, d_conv_w, d_conv_b = conv_silu_backward(
            x, conv_w, conv_b, k == 1, du.to(dx.dtype) + du_proj.to(dx.dtype))
        dx += dx_k
        param_grads += [
            d_conv_w, d_conv_b,
            d_x_proj.to(x_proj_w.dtype), d_dt_proj.to(dt_proj_w.dtype),
            dbias.to(dt_bias.dtype),
            # A = -exp(A_log): dA_log = dA * A
            (dA * -torch.exp(A_log.float())).to(A_log.dtype),
            dD.to(D.dtype)
        ]
    dxz = torch.cat([dx.to(xz.dtype), dz.to(xz.dtype)], dim=-1)
    return dxz, param_grads, None, None, None, None


_op = None


def define_bimamba_inner():
    """Defines ``torch.ops.mmvim.bimamba_inner`` (once)."""
    global _op
    if _op is not None:
        return _op
    _op = torch.library.custom_op(
        OP_NAME, _forward, mutates_args=(),
        schema='(Tensor xz, Tensor[] params, int dt_rank, int d_state, '
        'float scale, str kind) -> (Tensor, Tensor)')
    _op.register_fake(_fake)
    _op.register_autograd(_backward, setup_context=_setup_context)
    return _op


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
    kernel_ops(kind)  # built, its ops defined
    params = [*forward_params, *backward_params]
    for i in (1, 1 + PARAMS_PER_DIRECTION):  # the op takes a conv bias
        if params[i] is None:
            params[i] = params[i - 1].new_zeros(params[i - 1].shape[0])
    out, _ = torch.ops.mmvim.bimamba_inner(xz, params, dt_rank, d_state,
                                           0.5 if divide_out else 1.0, kind)
    return out
