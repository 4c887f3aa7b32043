"""Autograd functions around the compiled selective-scan kernels.

One wrapper serves the CPU kernel (``ops/selective_scan/csrc/
selective_scan_cpu.cpp``) and the CUDA kernel (``selective_scan_cuda*``):
both export the same functions. Data (u, delta, z) go to the kernel in
float32 (float64 on the CPU for float64 inputs; float16 / bfloat16 kept on
CUDA), weights (A, B, C, D, delta_bias) in float32 (float64 likewise); the
output comes back in u's dtype and every gradient in its input's dtype. B
and C are handed over transposed to (batch, G, L, N), so that the N values
of one token are adjacent in memory.
"""
import os

import torch

from .extension_loader import load_extension

SOURCES = {
    'cpu': ['selective_scan_cpu.cpp'],
    'cuda': ['selective_scan_cuda.cpp', 'selective_scan_cuda_fp32.cu',
             'selective_scan_cuda_fp16.cu', 'selective_scan_cuda_bf16.cu'],
}
# tests set MMVIM_SCAN_POISON=1: outputs start as NaN, so an element the
# kernel does not write fails the comparison with the reference
POISON_ENV = 'MMVIM_SCAN_POISON'
_CUDA_DATA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def load_kernel(kind):
    """The compiled extension for 'cpu' or 'cuda' (built on first use), or
    None when it cannot be built here."""
    return load_extension('selective_scan', SOURCES[kind], kind=kind)


def _kernel(device_type):
    module = load_kernel(device_type)
    module.set_poison_outputs(os.environ.get(POISON_ENV, '0') == '1')
    return module


def _dtypes(u):
    """(data dtype, weight dtype) the kernel computes with for input u."""
    if u.is_cuda:
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


def _meta(*tensors):
    """(dtype, ndim) of each input, None for absent ones: what backward
    needs to hand gradients back in the inputs' layout and dtype."""
    return [None if x is None else (x.dtype, x.dim()) for x in tensors]


def _cast_like(grad, meta):
    return None if meta is None else grad.to(meta[0])


def _bc_grad(grad, meta):
    """Kernel gradient (b, G, L, N) -> the layout and dtype of the input."""
    grad = grad.transpose(-1, -2)
    if meta[1] == 3:
        grad = grad.squeeze(1)
    return grad.to(meta[0])


class SelectiveScanFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                return_last_state, reverse):
        data, weight = _dtypes(u)
        args = [_prep(u, data), _prep(delta, data), _prep(A, weight),
                _prep_bc(B, weight), _prep_bc(C, weight), _prep(D, weight),
                _prep(delta_bias, weight), _prep(z, data)]
        out, acc, last = _kernel(u.device.type).scan_fwd(
            *args, bool(delta_softplus), bool(reverse),
            bool(return_last_state))
        ctx.save_for_backward(*args, acc)
        ctx.meta = _meta(u, delta, A, B, C, D, z, delta_bias)
        ctx.flags = (bool(delta_softplus), bool(reverse))
        ctx.mark_non_differentiable(last)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, dout, dlast):
        *args, acc = ctx.saved_tensors
        softplus, reverse = ctx.flags
        u, delta, A, B, C, D, z, delta_bias = ctx.meta
        du, ddelta, dA, dB, dC, dD, dbias, dz = _kernel(
            acc.device.type).scan_bwd(*args, dout.to(args[0].dtype), acc,
                                      softplus, reverse)
        return (_cast_like(du, u), _cast_like(ddelta, delta),
                _cast_like(dA, A), _bc_grad(dB, B), _bc_grad(dC, C),
                _cast_like(dD, D), _cast_like(dz, z),
                _cast_like(dbias, delta_bias), None, None, None)


class BiSelectiveScanFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, u_b, delta_b, A_b, B_b, C_b, D_b,
                z, delta_bias, delta_bias_b, delta_softplus, divide_out):
        data, weight = _dtypes(u)
        fwd = [_prep(u, data), _prep(delta, data), _prep(A, weight),
               _prep_bc(B, weight), _prep_bc(C, weight), _prep(D, weight),
               _prep(delta_bias, weight)]
        bwd = [_prep(u_b, data), _prep(delta_b, data), _prep(A_b, weight),
               _prep_bc(B_b, weight), _prep_bc(C_b, weight),
               _prep(D_b, weight), _prep(delta_bias_b, weight)]
        z32 = _prep(z, data)
        scale = 0.5 if divide_out else 1.0
        out, acc, _ = _kernel(u.device.type).bi_scan_fwd(
            *fwd, *bwd, z32, bool(delta_softplus), scale)
        ctx.save_for_backward(*fwd, *bwd, z32, acc)
        ctx.meta = _meta(u, delta, A, B, C, D, delta_bias, u_b, delta_b,
                         A_b, B_b, C_b, D_b, delta_bias_b, z)
        ctx.flags = (bool(delta_softplus), scale)
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, dout):
        saved = ctx.saved_tensors
        softplus, scale = ctx.flags
        grads = _kernel(saved[15].device.type).bi_scan_bwd(
            *saved[:7], *saved[7:14], saved[14], dout.to(saved[0].dtype),
            saved[15], softplus, scale)
        meta = ctx.meta

        def direction(g, m):
            du, ddelta, dA, dB, dC, dD, dbias = g
            return [_cast_like(du, m[0]), _cast_like(ddelta, m[1]),
                    _cast_like(dA, m[2]), _bc_grad(dB, m[3]),
                    _bc_grad(dC, m[4]), _cast_like(dD, m[5])], \
                _cast_like(dbias, m[6])

        fwd, dbias_f = direction(grads[0:7], meta[0:7])
        bwd, dbias_b = direction(grads[7:14], meta[7:14])
        dz = _cast_like(grads[14], meta[14])
        return (*fwd, *bwd, dz, dbias_f, dbias_b, None, None)


def selective_scan_kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False,
                          reverse=False):
    """Compiled twin of :func:`selective_scan_ref` (same arguments), on the
    kernel of u's device."""
    out, last = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias,
                                       delta_softplus, return_last_state,
                                       reverse)
    return (out, last) if return_last_state else out


def bi_selective_scan_kernel(u, delta, A, B, C, D, u_b, delta_b, A_b, B_b,
                             C_b, D_b, z=None, delta_bias=None,
                             delta_bias_b=None, delta_softplus=False,
                             divide_out=True):
    """Compiled twin of :func:`bi_selective_scan_ref`: both directions in one
    kernel launch, on the kernel of u's device."""
    return BiSelectiveScanFn.apply(u, delta, A, B, C, D, u_b, delta_b, A_b,
                                    B_b, C_b, D_b, z, delta_bias,
                                    delta_bias_b, delta_softplus, divide_out)
