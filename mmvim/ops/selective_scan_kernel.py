"""The compiled selective-scan kernels with the Mamba interface.

One wrapper serves the three builds of ``ops/selective_scan/csrc``: the CPU
kernel (``selective_scan_cpu.cpp``), the CUDA kernel
(``selective_scan_cuda*``) and that same CUDA kernel run on the CPU under
the SIMT emulation (kind ``simt``, on CPU tensors). Each build registers
its kernels as the operators ``scan_fwd``, ``scan_bwd`` and ``conv_silu``
of ``torch.ops.mmvim`` (``torch.ops.mmvim_simt`` for the emulation), with
fake implementations and autograd formulas (:mod:`mmvim.ops.library`), so
``torch.compile`` and ``torch.export`` see them as ordinary ops. They share
one interface (``selective_scan_interface.h``): token-major (b, L, E)
tensors read through their strides, so the Mamba layouts here, (b, E, L)
for u, delta, z and (b, N, L) / (b, G, N, L) / (E, N) for B and C, reach
the kernels as views (no copies); the output (b, L, E) comes back as a
(b, E, L) view. The CPU kernel computes in float32 (float64 for float64 inputs); the
CUDA kernel keeps float16 / bfloat16 data as they are, with float32 A, D,
delta_bias, state and accumulators, and B / C in the data dtype or float32.
Every gradient comes back in its input's dtype and layout.
"""
import contextlib
import os

import torch

from .extension_loader import build_extension, load_extension
from .library import NAMESPACES, define_ops, ops_namespace, scan_arguments

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
    on first use (its ops registered), or None (with a warning) when it
    cannot be built here."""
    define_ops(NAMESPACES[kind])
    return load_extension('selective_scan', SOURCES[kind], kind=kind)


def build_kernel(kind):
    """Like :func:`load_kernel`, but a failed build raises
    ``ExtensionBuildError`` with the compiler's reason."""
    define_ops(NAMESPACES[kind])
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


def kernel_ops(kind):
    """The operators of the kernel ``kind`` (``torch.ops.mmvim`` or
    ``torch.ops.mmvim_simt``), built on first use. While ``torch.compile``
    traces, only the namespace is looked up: the kernel was built when the
    implementation was chosen (``select_scan_impl``)."""
    if not torch.compiler.is_compiling():
        kernel_module(kind)
    return ops_namespace(kind)


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
    (b, N, L) -> G = 1; (b, G, N, L); (E, N) -> (1, 1, E, N), shared over
    batch and tokens, one group per channel."""
    if x.dim() == 2:
        return x.view(1, 1, dim, x.shape[1])
    if x.dim() == 3:
        return x.permute(0, 2, 1).unsqueeze(2)
    return x.permute(0, 3, 1, 2)


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


def _scan(kind, reverse, z, delta_softplus, scale, return_last_state,
          directions):
    """Mamba-interface directions (7 tensors each: u, delta, A, B, C, D,
    delta_bias) through the ``scan_fwd`` op: (out (b, E, L) in u's dtype,
    last state). The layout changes and casts around the op are ordinary
    differentiable views; the op's autograd formula runs ``scan_bwd``."""
    kernel_dirs = []
    for k in range(0, len(directions), 7):
        kernel_dirs += _mamba_direction(kind, *directions[k:k + 7])
    data = kernel_dirs[0].dtype
    z_k = None if z is None else _to(z, data).transpose(1, 2)
    out, _, last = kernel_ops(kind).scan_fwd(
        *scan_arguments(kernel_dirs), z_k, bool(reverse),
        bool(delta_softplus), float(scale), bool(return_last_state))
    return out.transpose(1, 2).to(directions[0].dtype), last


def selective_scan_kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False,
                          reverse=False, kind=None):
    """Compiled twin of :func:`selective_scan_ref` (same arguments; B and C
    may also be constant (E, N)) on the kernel of ``kind`` (default: the
    one of u's device)."""
    kind = kind or default_kind(u.device.type)
    out, last = _scan(kind, reverse, z, delta_softplus, 1.0,
                      return_last_state, (u, delta, A, B, C, D, delta_bias))
    return (out, last) if return_last_state else out


def bi_selective_scan_kernel(u, delta, A, B, C, D, u_b, delta_b, A_b, B_b,
                             C_b, D_b, z=None, delta_bias=None,
                             delta_bias_b=None, delta_softplus=False,
                             divide_out=True, kind=None):
    """Compiled twin of :func:`bi_selective_scan_ref`: both directions in one
    kernel launch, on the kernel of ``kind`` (default: u's device's)."""
    kind = kind or default_kind(u.device.type)
    out, _ = _scan(kind, False, z, delta_softplus, 0.5 if divide_out else 1.0,
                   False, (u, delta, A, B, C, D, delta_bias, u_b, delta_b,
                           A_b, B_b, C_b, D_b, delta_bias_b))
    return out
