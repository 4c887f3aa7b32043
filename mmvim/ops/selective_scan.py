"""The selective-scan API of mmvim and the choice of implementation.

``selective_scan`` and ``bi_selective_scan`` dispatch to the fastest
implementation available for the inputs' device. The environment variable
``MMVIM_SCAN_IMPL`` forces one: ``ref`` (pure PyTorch), ``cpu`` or ``cuda``
(compiled kernels); ``auto`` (default) picks by itself.
"""
import os

from .selective_scan_ref import bi_selective_scan_ref, selective_scan_ref

SCAN_IMPL_ENV = 'MMVIM_SCAN_IMPL'


def _compiled(kind):
    """(selective_scan, bi_selective_scan) of the compiled ``kind`` kernel,
    or None when it cannot be built (or, for CUDA, no GPU is usable)."""
    import torch

    from .selective_scan_kernel import (bi_selective_scan_kernel,
                                        load_kernel, selective_scan_kernel)
    if kind == 'cuda' and not torch.cuda.is_available():
        return None
    if load_kernel(kind) is None:
        return None
    return selective_scan_kernel, bi_selective_scan_kernel


# device type -> loader of its compiled kernel's functions
_KERNEL_LOADERS = {'cpu': lambda: _compiled('cpu'),
                   'cuda': lambda: _compiled('cuda')}
# kernels 'auto' picks. The CUDA kernel builds and imports everywhere but has
# not yet run its numerical tests on a GPU (tests/test_ops/
# test_selective_scan_cuda.py): until it has, it runs only when asked for
# with MMVIM_SCAN_IMPL=cuda, and GPUs use the reference by default.
_AUTO_KERNELS = ('cpu', )
_kernels = {'ref': (selective_scan_ref, bi_selective_scan_ref)}


def _implementation(name):
    if name not in _kernels:
        _kernels[name] = _KERNEL_LOADERS[name]()
    return _kernels[name]


def available_scan_impls():
    """Names of the implementations usable in this process (builds the
    kernels on first call)."""
    return sorted(name for name in ['ref', *_KERNEL_LOADERS]
                  if _implementation(name) is not None)


def select_scan_impl(device_type):
    """Name of the implementation used for tensors on ``device_type``."""
    forced = os.environ.get(SCAN_IMPL_ENV, 'auto').strip().lower()
    if forced not in ('auto', 'ref', 'cpu', 'cuda'):
        raise ValueError(f'{SCAN_IMPL_ENV}={forced!r} is not valid; '
                         'choose auto, ref, cpu or cuda')
    if forced == 'ref':
        return 'ref'
    if forced != 'auto':
        if forced != device_type:
            raise RuntimeError(
                f'{SCAN_IMPL_ENV}={forced} but the inputs are on '
                f'{device_type}; unset {SCAN_IMPL_ENV} or move the inputs')
        if forced not in _KERNEL_LOADERS or _implementation(forced) is None:
            raise RuntimeError(
                f'{SCAN_IMPL_ENV}={forced} but the {forced} scan kernel '
                'could not be built here (see the warning above); unset '
                f'{SCAN_IMPL_ENV} to fall back to the reference')
        return forced
    if device_type in _AUTO_KERNELS and \
            _implementation(device_type) is not None:
        return device_type
    return 'ref'


def selective_scan(u,
                   delta,
                   A,
                   B,
                   C,
                   D=None,
                   z=None,
                   delta_bias=None,
                   delta_softplus=False,
                   return_last_state=False):
    """Selective scan with the Mamba interface (see ``selective_scan_ref``).

    u, delta, z: (batch, E, L); A: (E, N) float32; B, C: (batch, N, L) or
    (batch, G, N, L); D, delta_bias: (E,) float32. Output in u's dtype.
    """
    fn = _implementation(select_scan_impl(u.device.type))[0]
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
              return_last_state)


def bi_selective_scan(u,
                      delta,
                      A,
                      B,
                      C,
                      D,
                      u_b,
                      delta_b,
                      A_b,
                      B_b,
                      C_b,
                      D_b,
                      z=None,
                      delta_bias=None,
                      delta_bias_b=None,
                      delta_softplus=False,
                      divide_out=True):
    """Both Vim directions in one call (see ``bi_selective_scan_ref``).

    The ``*_b`` tensors are in original token order and scanned right to
    left; returns ``(y_fwd + y_bwd) * silu(z)`` (halved if ``divide_out``).
    """
    fn = _implementation(select_scan_impl(u.device.type))[1]
    return fn(u, delta, A, B, C, D, u_b, delta_b, A_b, B_b, C_b, D_b, z,
              delta_bias, delta_bias_b, delta_softplus, divide_out)
