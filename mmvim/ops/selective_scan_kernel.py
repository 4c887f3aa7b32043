"""Autograd functions around the compiled selective-scan kernels, with the
Mamba interface.

One wrapper serves the three builds of ``ops/selective_scan/csrc``: the CPU
kernel (``selective_scan_cpu.cpp``), the CUDA kernel
(``selective_scan_cuda*``) and that same CUDA kernel run on the CPU under
the SIMT emulation (kind ``simt``, on CPU tensors). They share one
interface (``selective_scan_interface.h``): token-major (b, L, E) tensors
read through their strides, so the Mamba layouts here, (b, E, L) for u,
delta, z and (b, N, L) / (b, G, N, L) / (E, N) for B and C, reach the
kernels as views (no copies); the output (b, L, E) comes back as a (b, E, L)
view. The CPU kernel computes in float32 (float64 for float64 inputs); the
CUDA kernel keeps float16 / bfloat16 data as they are, with float32 A, D,
delta_bias, state and accumulators, and B / C in the data dtype or float32.
Every gradient comes back in its input's dtype and layout.
"""
import contextlib
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


@contextlib.contextmanager
def simt_launch_records(dry_run=True):
    """The emulated CUDA kernel's launches made inside the ``with`` block,
    as a list of dicts (kernel, grid, block, dynamic_smem) filled when it
    ends. ``dry_run``: the launches are checked and recorded but compute
    nothing (outputs are left unwritten), so shapes too large to emulate
    can be inspected."""
    module = build_kernel('simt')
    module.simt_launches()  # forget earlier ones
    module.simt_set_dry_run(dry_run)
    records = []
    try:
        yield records
    finally:
        module.simt_set_dry_run(False)
        records.extend(module.simt_launches())


def kernel_module(kind):
    """The built extension of ``kind``, its poisoning set from the
    environment (MMVIM_SCAN_POISON)."""
    module = build_kernel(kind)
    module.set_poison_outputs(os.environ.get(POISON_ENV, '0') == '1')
    return module


def compute_dtypes(kind, x):
    """(data dtype, weight dtype) the kernel of ``kind`` computes with for
    data x."""
    if kind in ('cuda', 'simt'):
        data = x.dtype if x.dtype in _CUDA_DATA_DTYPES else torch.float32
        return data, torch.float32
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    return wide, wide


def bc_dtype(data, weight, B, C):
    """B and C stay in the data dtype where both have it; otherwise both go
    to the weight dtype (float32 on CUDA)."""
    return data if B.dtype == data and C.dtype == data else weight


def _to(x, dtype):
    """x in dtype (its strides kept), None stays None."""
    return None if x is None else x.to(dtype)


def bc_view(x, batch, length, dim):
    """B or C of the Mamba interface -> the kernel's (b, L, G, N) view:
    (b, N, L) -> G = 1; (b, G, N, L); (E, N) -> shared over batch and
    tokens, one group per channel."""
    if x.dim() == 2:
        return x.view(1, 1, dim, x.shape[1]).expand(batch, length, -1, -1)
    if x.dim() == 3:
        return x.permute(0, 2, 1).unsqueeze(2)
    return x.permute(0, 3, 1, 2)


def bc_grad(grad, x):
    """The kernel's dB (b or 1, L or 1, G, N) -> the layout and dtype of
    the Mamba-interface input x."""
    if x.dim() == 2:
        grad = grad.view(x.shape)
    elif x.dim() == 3:
        grad = grad.squeeze(2).permute(0, 2, 1)
    else:
        grad = grad.permute(0, 2, 3, 1)
    return grad.to(x.dtype)


def _grad_like(grad, x):
    return None if x is None else grad.to(x.dtype)


def _mamba_direction(kind, u, delta, A, B, C, D, delta_bias):
    """One direction of the Mamba interface as the kernel's list [x,
    conv_weight, conv_bias, delta, A, B, C, D, delta_bias] (no conv)."""
    data, weight = compute_dtypes(kind, u)
    batch, dim, length = u.shape
    bcd = bc_dtype(data, weight, B, C)
    return [_to(u, data).transpose(1, 2), None, None,
            _to(delta, data).transpose(1, 2), _to(A, weight).contiguous(),
            bc_view(_to(B, bcd), batch, length, dim),
            bc_view(_to(C, bcd), batch, length, dim),
            None if D is None else _to(D, weight).contiguous(),
            None if delta_bias is None else _to(delta_bias,
                                                 weight).contiguous()]


def _direction_grads(grads, inputs):
    """Kernel gradients [du, ddelta, dA, dB, dC, dD, dbias] of one
    direction -> those of its inputs (u, delta, A, B, C, D, delta_bias)."""
    du, ddelta, dA, dB, dC, dD, dbias = grads
    u, delta, A, B, C, D, delta_bias = inputs
    return [du.transpose(1, 2).to(u.dtype),
            ddelta.transpose(1, 2).to(delta.dtype), dA.to(A.dtype),
            bc_grad(dB, B), bc_grad(dC, C), _grad_like(dD, D),
            _grad_like(dbias, delta_bias)]


class SelectiveScanFn(torch.autograd.Function):
    """One or two directions of the Mamba-interface selective scan."""

    @staticmethod
    def forward(ctx, kind, reverse, z, delta_softplus, scale,
                return_last_state, *directions):
        ndirs = len(reverse)
        inputs = [directions[7 * k:7 * k + 7] for k in range(ndirs)]
        kernel_dirs = [_mamba_direction(kind, *d) for d in inputs]
        data = kernel_dirs[0][0].dtype
        z_k = None if z is None else _to(z, data).transpose(1, 2)
        out, states, last = kernel_module(kind).scan_fwd(
            kernel_dirs, list(reverse), z_k, bool(delta_softplus),
            float(scale), bool(return_last_state))
        ctx.save_for_backward(z, states, *directions)
        ctx.options = dict(kind=kind, reverse=list(reverse), ndirs=ndirs,
                           softplus=bool(delta_softplus), scale=float(scale))
        ctx.mark_non_differentiable(last)
        return out.transpose(1, 2).to(directions[0].dtype), last

    @staticmethod
    def backward(ctx, dout, dlast):
        z, states, *directions = ctx.saved_tensors
        opts = ctx.options
        inputs = [directions[7 * k:7 * k + 7] for k in range(opts['ndirs'])]
        kernel_dirs = [_mamba_direction(opts['kind'], *d) for d in inputs]
        data = kernel_dirs[0][0].dtype
        z_k = None if z is None else _to(z, data).transpose(1, 2)
        *grads, dz = kernel_module(opts['kind']).scan_bwd(
            kernel_dirs, opts['reverse'], z_k,
            dout.to(data).transpose(1, 2), states, opts['softplus'],
            opts['scale'])
        direction_grads = []
        for k, d in enumerate(inputs):
            direction_grads += _direction_grads(grads[7 * k:7 * k + 7], d)
        dz = None if z is None else dz.transpose(1, 2).to(z.dtype)
        return (None, None, dz, None, None, None, *direction_grads)


def selective_scan_kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False,
                          reverse=False, kind=None):
    """Compiled twin of :func:`selective_scan_ref` (same arguments; B and C
    may also be constant (E, N)) on the kernel of ``kind`` (default: the
    one of u's device)."""
    kind = kind or default_kind(u.device.type)
    out, last = SelectiveScanFn.apply(kind, (bool(reverse), ), z,
                                      delta_softplus, 1.0, return_last_state,
                                      u, delta, A, B, C, D, delta_bias)
    return (out, last) if return_last_state else out


def bi_selective_scan_kernel(u, delta, A, B, C, D, u_b, delta_b, A_b, B_b,
                             C_b, D_b, z=None, delta_bias=None,
                             delta_bias_b=None, delta_softplus=False,
                             divide_out=True, kind=None):
    """Compiled twin of :func:`bi_selective_scan_ref`: both directions in one
    kernel launch, on the kernel of ``kind`` (default: u's device's)."""
    kind = kind or default_kind(u.device.type)
    out, _ = SelectiveScanFn.apply(
        kind, (False, True), z, delta_softplus, 0.5 if divide_out else 1.0,
        False, u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b,
        D_b, delta_bias_b)
    return out
