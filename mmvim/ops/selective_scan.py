"""The selective-scan API of mmvim and the choice of implementation.

``selective_scan`` and ``bi_selective_scan`` dispatch to the fastest
implementation available for the inputs' device. The environment variable
``MMVIM_SCAN_IMPL`` forces one: ``ref`` (pure PyTorch), ``cpu`` or ``cuda``
(compiled kernels); ``auto`` (default) picks by itself.
"""
import os

from .selective_scan_ref import bi_selective_scan_ref, selective_scan_ref

SCAN_IMPL_ENV = 'MMVIM_SCAN_IMPL'

# name -> (selective_scan, bi_selective_scan); compiled kernels register here
# when they can be built for this machine.
_IMPLEMENTATIONS = {'ref': (selective_scan_ref, bi_selective_scan_ref)}
# per device type, fastest first
_PREFERENCE = {'cpu': ('cpu', 'ref'), 'cuda': ('cuda', 'ref')}


def register_scan_impl(name, scan_fn, bi_scan_fn):
    """Make a compiled implementation available to the dispatcher."""
    _IMPLEMENTATIONS[name] = (scan_fn, bi_scan_fn)


def available_scan_impls():
    """Names of the implementations usable in this process."""
    return sorted(_IMPLEMENTATIONS)


def select_scan_impl(device_type):
    """Name of the implementation used for tensors on ``device_type``."""
    forced = os.environ.get(SCAN_IMPL_ENV, 'auto').strip().lower()
    if forced not in ('auto', 'ref', 'cpu', 'cuda'):
        raise ValueError(f'{SCAN_IMPL_ENV}={forced!r} is not valid; '
                         'choose auto, ref, cpu or cuda')
    if forced != 'auto':
        if forced not in _IMPLEMENTATIONS:
            raise RuntimeError(
                f'{SCAN_IMPL_ENV}={forced} but the {forced} scan kernel is '
                f'not available here (available: {available_scan_impls()}); '
                f'unset {SCAN_IMPL_ENV} to fall back automatically')
        return forced
    for name in _PREFERENCE.get(device_type, ('ref', )):
        if name in _IMPLEMENTATIONS:
            return name
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
    fn = _IMPLEMENTATIONS[select_scan_impl(u.device.type)][0]
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
    fn = _IMPLEMENTATIONS[select_scan_impl(u.device.type)][1]
    return fn(u, delta, A, B, C, D, u_b, delta_b, A_b, B_b, C_b, D_b, z,
              delta_bias, delta_bias_b, delta_softplus, divide_out)
