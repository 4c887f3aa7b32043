"""Autograd functions around the compiled selective-scan kernels.

One wrapper serves the three builds of ``ops/selective_scan/csrc``: the CPU
kernel (``selective_scan_cpu.cpp``), the CUDA kernel
(``selective_scan_cuda*``) and that same CUDA kernel run on the CPU under
the SIMT emulation (kind ``simt``, on CPU tensors). They export the same
functions. The CPU kernel computes in float32 (float64 for float64 inputs);
the CUDA kernel keeps float16 / bfloat16 data (u, delta, z) as they are,
with float32 weights (A, B, C, D, delta_bias), state and accumulator. The
output comes back in u's dtype and every gradient in its input's dtype. B
and C are handed over transposed to (batch, G, L, N), so that the N values
of one token are adjacent in memory.
"""
import os

import torch

from .extension_loader import build_extension, load_extension

_CUDA_SOURCES = ['selective_scan_cuda.cpp', 'selective_scan_cuda_fp32.cu',
                 'selective_scan_cuda_fp16.cu', 'selective_scan_cuda_bf16.cu']
SOURCES = {'cpu': ['selective_scan_cpu.cpp'], 'cuda': _CUDA_SOURCES,
           'simt': _CUDA_SOURCES}
# tests set MMVIM_SCAN_POISON=1: outputs start as NaN, so an element the
# kernel does not write fails the comparison with the reference
POISON_ENV = 'MMVIM_SCAN_POISON'
_CUDA_DATA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def load_kernel(kind):
    """The compiled extension of ``kind`` ('cpu', 'cuda' or 'simt'), built
    on first use, or None (with a warning) when it cannot be built here."""
    return load_extension('selective_scan', SOURCES[kind], kind=kind)


def build_kernel(kind):
    """Like :func:`load_kernel`, but a failed build raises
    ``ExtensionBuildError`` with the compiler's reason."""
    return build_extension('selective_scan', SOURCES[kind], kind=kind)


def default_kind(device_type):
    """The kernel kind for tensors on ``device_type`` ('cpu' or 'cuda')."""
    return 'cuda' if device_type == 'cuda' else 'cpu'


def _kernel(kind):
    module = build_kernel(kind)
    module.set_poison_outputs(os.environ.get(POISON_ENV, '0') == '1')
    return module


def _dtypes(kind, u):
    """(data dtype, weight dtype) the kernel of ``kind`` computes with."""
    if kind in ('cuda', 'simt'):
        data = u.dtype if u.dtype in _CUDA_DATA_DTYPES else torch.float32
        return data, torch.float32
    wide = torch.float64 if u.dtype == torch.float64 else torch.float32
    return wide, wide


def _prep(x, dtype):
    return None if x is None else x.to(dtype).contiguous()


def _prep_bc(x, dtype):
    """(b, N, L) or (b, G, N, L) -> contiguous (b, G, L, N)."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.to(dtype).transpose(-1, -2).contiguous()


def _meta(x):
    """(dtype, ndim) of an input, None when absent: what backward needs to
    hand its gradient back in the input's layout and dtype."""
    return None if x is None else (x.dtype, x.dim())


def _cast_like(grad, meta):
    return None if meta is None else grad.to(meta[0])


def _bc_grad(grad, meta):
    """Kernel gradient (b, G, L, N) -> the layout and dtype of the input."""
    grad = grad.transpose(-1, -2)
    if meta[1] == 3:
        grad = grad.squeeze(1)
    return grad.to(meta[0])


_DIRECTION = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')


def _prep_direction(data, weight, u, delta, A, B, C, D, delta_bias):
    """One direction's tensors as the kernel takes them (the order of its
    arguments: u, delta, A, Bt, Ct, D, bias)."""
    return [_prep(u, data), _prep(delta, data), _prep(A, weight),
            _prep_bc(B, weight), _prep_bc(C, weight), _prep(D, weight),
            _prep(delta_bias, weight)]


def _direction_grads(grads, metas):
    """Kernel gradients [du, ddelta, dA, dBt, dCt, dD, dbias] of one
    direction -> dict by input name, in each input's dtype and layout."""
    out = {}
    for name, grad in zip(_DIRECTION, grads):
        meta = metas[name]
        out[name] = _bc_grad(grad, meta) if name in ('B', 'C') else \
            _cast_like(grad, meta)
    return out


class SelectiveScanFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                return_last_state, reverse, kind):
        data, weight = _dtypes(kind, u)
        direction = _prep_direction(data, weight, u, delta, A, B, C, D,
                                    delta_bias)
        z_k = _prep(z, data)
        out, acc, last = _kernel(kind).scan_fwd(
            *direction, z_k, bool(delta_softplus), bool(reverse),
            bool(return_last_state))
        ctx.save_for_backward(*direction, z_k, acc)
        ctx.metas = {name: _meta(x) for name, x in zip(
            _DIRECTION, (u, delta, A, B, C, D, delta_bias))}
        ctx.z_meta = _meta(z)
        ctx.options = dict(softplus=bool(delta_softplus),
                           reverse=bool(reverse), kind=kind)
        ctx.mark_non_differentiable(last)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, dout, dlast):
        *direction, z_k, acc = ctx.saved_tensors
        opts = ctx.options
        *grads, dz = _kernel(opts['kind']).scan_bwd(
            *direction, z_k, dout.to(direction[0].dtype), acc,
            opts['softplus'], opts['reverse'])
        g = _direction_grads(grads, ctx.metas)
        return (g['u'], g['delta'], g['A'], g['B'], g['C'], g['D'],
                _cast_like(dz, ctx.z_meta), g['delta_bias'], None, None,
                None, None)


class BiSelectiveScanFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, u_b, delta_b, A_b, B_b, C_b, D_b,
                z, delta_bias, delta_bias_b, delta_softplus, divide_out,
                kind):
        data, weight = _dtypes(kind, u)
        fwd = _prep_direction(data, weight, u, delta, A, B, C, D, delta_bias)
        bwd = _prep_direction(data, weight, u_b, delta_b, A_b, B_b, C_b, D_b,
                              delta_bias_b)
        z_k = _prep(z, data)
        scale = 0.5 if divide_out else 1.0
        out, acc, _ = _kernel(kind).bi_scan_fwd(
            *fwd, *bwd, z_k, bool(delta_softplus), scale)
        ctx.save_for_backward(*fwd, *bwd, z_k, acc)
        ctx.metas = (
            {name: _meta(x) for name, x in zip(
                _DIRECTION, (u, delta, A, B, C, D, delta_bias))},
            {name: _meta(x) for name, x in zip(
                _DIRECTION, (u_b, delta_b, A_b, B_b, C_b, D_b,
                             delta_bias_b))})
        ctx.z_meta = _meta(z)
        ctx.options = dict(softplus=bool(delta_softplus), scale=scale,
                           kind=kind)
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, dout):
        saved = ctx.saved_tensors
        n = len(_DIRECTION)
        fwd, bwd = saved[:n], saved[n:2 * n]
        z_k, acc = saved[2 * n:]
        opts = ctx.options
        grads = _kernel(opts['kind']).bi_scan_bwd(
            *fwd, *bwd, z_k, dout.to(fwd[0].dtype), acc, opts['softplus'],
            opts['scale'])
        g_f = _direction_grads(grads[:n], ctx.metas[0])
        g_b = _direction_grads(grads[n:2 * n], ctx.metas[1])
        dz = _cast_like(grads[2 * n], ctx.z_meta)
        return (g_f['u'], g_f['delta'], g_f['A'], g_f['B'], g_f['C'],
                g_f['D'], g_b['u'], g_b['delta'], g_b['A'], g_b['B'],
                g_b['C'], g_b['D'], dz, g_f['delta_bias'], g_b['delta_bias'],
                None, None, None)


def selective_scan_kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False,
                          reverse=False, kind=None):
    """Compiled twin of :func:`selective_scan_ref` (same arguments) on the
    kernel of ``kind`` (default: the one of u's device)."""
    kind = kind or default_kind(u.device.type)
    out, last = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias,
                                      delta_softplus, return_last_state,
                                      reverse, kind)
    return (out, last) if return_last_state else out


def bi_selective_scan_kernel(u, delta, A, B, C, D, u_b, delta_b, A_b, B_b,
                             C_b, D_b, z=None, delta_bias=None,
                             delta_bias_b=None, delta_softplus=False,
                             divide_out=True, kind=None):
    """Compiled twin of :func:`bi_selective_scan_ref`: both directions in one
    kernel launch, on the kernel of ``kind`` (default: u's device's)."""
    kind = kind or default_kind(u.device.type)
    return BiSelectiveScanFn.apply(u, delta, A, B, C, D, u_b, delta_b, A_b,
                                   B_b, C_b, D_b, z, delta_bias,
                                   delta_bias_b, delta_softplus, divide_out,
                                   kind)
