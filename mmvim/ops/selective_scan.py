"""The selective-scan API of mmvim and the choice of implementation.

``selective_scan`` and ``bi_selective_scan`` dispatch to the fastest
implementation available for the inputs' device:

- CPU tensors: the C++ CPU kernel (``cpu``);
- CUDA tensors: the CUDA kernel (``cuda``), once it has passed a self-check
  against the reference on that device in this process;
- otherwise, or when a kernel cannot be built or fails its self-check, the
  pure-PyTorch reference (``ref``), with one warning saying why and what it
  costs.

The environment variable ``MMVIM_SCAN_IMPL`` forces one: ``ref``, ``cpu``,
``cuda``, or ``simt`` (the CUDA kernel run on CPU tensors under the SIMT
emulation: slow, for checking the CUDA source without a GPU); ``auto``
(default) picks by itself. A forced kernel that cannot be built or fails its
self-check is an error, not a fallback.
"""
import functools
import os
import warnings

import torch

from .extension_loader import ExtensionBuildError
from .selective_scan_ref import bi_selective_scan_ref, selective_scan_ref

SCAN_IMPL_ENV = 'MMVIM_SCAN_IMPL'
KERNEL_KINDS = ('cpu', 'cuda', 'simt')
# the device type each kernel kind takes its tensors on
KIND_DEVICE = {'cpu': 'cpu', 'cuda': 'cuda', 'simt': 'cpu'}
# the kernel 'auto' uses for each device type
AUTO_KINDS = {'cpu': 'cpu', 'cuda': 'cuda'}
# kernels checked against the reference on each device before first use
SELF_CHECKED_KINDS = ('cuda', 'simt')
# what falling back costs on a GPU, for the warnings
REFERENCE_COST = (
    'the reference loops over the tokens in Python (several times slower) '
    'and keeps about 4.5*b*E*L*N floats per bidirectional scan for backward '
    '(about 2.8 GB per Vim-Ti layer at batch 128)')

_build_errors = {}   # kind -> ExtensionBuildError, or None once built
_self_checks = {}    # (kind, device) -> None (passed) or the failure


def _device(device):
    """torch.device with an index for CUDA (the current one if absent)."""
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return device


def _build(kind):
    """None when the kernel of ``kind`` builds, else the error (cached)."""
    if kind not in _build_errors:
        from .selective_scan_kernel import build_kernel
        try:
            build_kernel(kind)
            _build_errors[kind] = None
        except ExtensionBuildError as error:
            _build_errors[kind] = error
    return _build_errors[kind]


def kernel_functions(kind):
    """(selective_scan, bi_selective_scan) of the compiled ``kind``."""
    from .selective_scan_kernel import (bi_selective_scan_kernel,
                                        selective_scan_kernel)
    return (functools.partial(selective_scan_kernel, kind=kind),
            functools.partial(bi_selective_scan_kernel, kind=kind))


def _rel_error(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.norm().item()
    return (a - b).norm().item() / (scale if scale > 0 else 1.)


def self_check(functions, device, tolerance=1e-3):
    """Runs a small scan through ``functions`` (a (selective_scan,
    bi_selective_scan) pair) on ``device`` against the float64 reference on
    the CPU: forward, last state and every gradient of a bidirectional scan
    with grouped B/C, channels that fill no warp and a reverse scan with
    the last state. Returns None when all agree within ``tolerance``
    (relative L2), else a sentence naming the first output that does not.
    Costs a few tens of milliseconds on a GPU.
    """
    scan, bi_scan = functions
    g = torch.Generator().manual_seed(0)
    batch, dim, state, length, groups = 2, 48, 16, 37, 2

    def directions():
        return dict(
            u=torch.randn(batch, dim, length, generator=g),
            delta=torch.randn(batch, dim, length, generator=g) * .5 - 1,
            A=-torch.rand(dim, state, generator=g) * 4 - .1,
            B=torch.randn(batch, groups, state, length, generator=g),
            C=torch.randn(batch, groups, state, length, generator=g),
            D=torch.randn(dim, generator=g),
            delta_bias=torch.randn(dim, generator=g) * .5)

    f, b = directions(), directions()
    z = torch.randn(batch, dim, length, generator=g)
    names = ('u', 'delta', 'A', 'B', 'C', 'D')
    leaves = [f[k] for k in names] + [b[k] for k in names] + \
        [z, f['delta_bias'], b['delta_bias']]
    grad_out = torch.randn(batch, dim, length, generator=g)
    results = {}
    for where, cast in (('kernel', lambda x: x.to(device)),
                        ('reference', lambda x: x.double())):
        xs = [cast(x).requires_grad_(True) for x in leaves]
        impl = bi_scan if where == 'kernel' else bi_selective_scan_ref
        out = impl(*xs[:12], z=xs[12], delta_bias=xs[13],
                   delta_bias_b=xs[14], delta_softplus=True)
        grads = torch.autograd.grad(out, xs, cast(grad_out))
        single = scan if where == 'kernel' else selective_scan_ref
        y, last = single(xs[0], xs[1], xs[2], xs[3], xs[4], xs[5], z=xs[12],
                         delta_bias=xs[13], delta_softplus=True,
                         return_last_state=True, reverse=True)
        results[where] = [out, y, last, *grads]
    labels = ['bidirectional output', 'reverse-scan output', 'last state'] + \
        [f'gradient of {n}' for n in names] + \
        [f'gradient of {n}_b' for n in names] + \
        ['gradient of z', 'gradient of delta_bias', 'gradient of delta_bias_b']
    for label, got, want in zip(labels, results['kernel'],
                                results['reference']):
        error = _rel_error(got, want)
        if not error <= tolerance:  # NaN fails too
            return (f'{label} differs from the reference by {error:.2g} '
                    f'(relative L2, tolerance {tolerance:g})')
    return None


def _device_name(device):
    if device.type == 'cuda':
        return f'{device} ({torch.cuda.get_device_name(device)})'
    return str(device)


def _self_check(kind, device):
    """None when ``kind`` passed its self-check on ``device`` (cached per
    process), else the failure."""
    key = (kind, str(device))
    if key not in _self_checks:
        try:
            # the first scan may come inside no_grad, inference_mode or
            # autocast: the check needs gradients and full precision
            with torch.inference_mode(False), torch.enable_grad(), \
                    torch.autocast(device.type, enabled=False):
                _self_checks[key] = self_check(kernel_functions(kind),
                                               device)
        except RuntimeError as error:  # a kernel error is a failed check
            _self_checks[key] = f'it raised {error}'.splitlines()[0]
    return _self_checks[key]


def _unusable(kind, device):
    """Why the kernel ``kind`` cannot serve ``device`` (None if it can)."""
    error = _build(kind)
    if error is not None:
        return str(error)
    if kind in SELF_CHECKED_KINDS:
        failure = _self_check(kind, device)
        if failure is not None:
            return (f'the {kind} selective-scan kernel failed its self-check '
                    f'on {_device_name(device)}: {failure}')
    return None


_warned = set()


def _warn_fallback(kind, device, reason):
    if (kind, str(device)) in _warned:
        return
    _warned.add((kind, str(device)))
    fix = ''
    if kind == 'cuda' and _build_errors.get(kind) is not None:
        fix = ('; to fix it, install the CUDA toolkit matching torch '
               f'(CUDA {torch.version.cuda}) and set CUDA_HOME to it')
    cost = f' ({REFERENCE_COST})' if device.type == 'cuda' else ''
    warnings.warn(
        f'mmvim: {reason}; scans on {device} use the pure-PyTorch reference '
        f'instead{cost}{fix}', RuntimeWarning, stacklevel=3)


def select_scan_impl(device):
    """Name of the implementation used for tensors on ``device`` (a
    torch.device or a device type such as 'cpu' or 'cuda')."""
    device = _device(device)
    forced = os.environ.get(SCAN_IMPL_ENV, 'auto').strip().lower()
    if forced not in ('auto', 'ref', *KERNEL_KINDS):
        raise ValueError(f'{SCAN_IMPL_ENV}={forced!r} is not valid; '
                         'choose auto, ref, cpu, cuda or simt')
    if forced == 'ref':
        return 'ref'
    if forced != 'auto':
        if KIND_DEVICE[forced] != device.type:
            raise RuntimeError(
                f'{SCAN_IMPL_ENV}={forced} takes {KIND_DEVICE[forced]} '
                f'tensors but the inputs are on {device.type}; unset '
                f'{SCAN_IMPL_ENV} or move the inputs')
        reason = _unusable(forced, device)
        if reason is not None:
            raise RuntimeError(f'{SCAN_IMPL_ENV}={forced}, but {reason}; '
                               f'unset {SCAN_IMPL_ENV} to fall back to the '
                               'reference')
        return forced
    kind = AUTO_KINDS.get(device.type)
    if kind is None:
        return 'ref'
    reason = _unusable(kind, device)
    if reason is not None:
        _warn_fallback(kind, device, reason)
        return 'ref'
    return kind


def available_scan_impls(device='cpu'):
    """Names of the implementations 'auto' can use for tensors on
    ``device`` in this process: 'ref' and, once built (and self-checked),
    the device's kernel. ('simt', the emulation, is only used when forced.)
    """
    device = _device(device)
    kind = AUTO_KINDS.get(device.type)
    usable = kind is not None and _unusable(kind, device) is None
    return ['ref'] + ([kind] if usable else [])


def _functions(device):
    impl = select_scan_impl(device)
    if impl == 'ref':
        return selective_scan_ref, bi_selective_scan_ref
    return kernel_functions(impl)


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
    fn = _functions(u.device)[0]
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
    fn = _functions(u.device)[1]
    return fn(u, delta, A, B, C, D, u_b, delta_b, A_b, B_b, C_b, D_b, z,
              delta_bias, delta_bias_b, delta_softplus, divide_out)
