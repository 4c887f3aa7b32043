"""The CUDA kernel against the float64 reference, values and every gradient.

Without a GPU the unchanged CUDA sources run on the CPU under the SIMT
emulation (kind 'simt': ``ops/selective_scan/csrc/simt_emulation.h``); with
one, the same tests run the real kernel on the device. Outputs start as NaN
(MMVIM_SCAN_POISON=1), so an element the kernel does not write fails.

The matrix covers float32 / float16 / bfloat16 data, single and
bidirectional scans, N in {1, 5, 16, 24, 64, 256}, grouped and ungrouped B/C,
with and without z, D, delta_bias, softplus and the last state, L in
{1, 7, 197, 2049} and 6085 (a 1248x1248 image) for one small case, and
channel counts that leave threads of a block (and lanes of a warp) idle.
"""
import importlib
import re
import shutil
import warnings

import pytest
import torch

from mmvim.ops import bi_selective_scan_ref, selective_scan_ref
from mmvim.ops.selective_scan_kernel import (bi_selective_scan_kernel,
                                             build_kernel,
                                             selective_scan_kernel,
                                             simt_launch_records)
from compilers import require_compiler

ON_GPU = torch.cuda.is_available()
# the device the kernel's tensors live on, and the build that runs there
DEVICE, KIND = ('cuda', 'cuda') if ON_GPU else ('cpu', 'simt')


@pytest.fixture(scope='module', autouse=True)
def kernel():
    """A compiler is all the tests need; a failed build fails them."""
    require_compiler(KIND)
    return build_kernel(KIND)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setenv('MMVIM_SCAN_POISON', '1')


@pytest.mark.skipif(shutil.which('nvcc') is None and not ON_GPU,
                    reason='nvcc is not installed: the CUDA build cannot '
                    'be compiled here')
def test_cuda_extension_compiles_links_and_imports():
    module = build_kernel('cuda')  # raises with the compiler's error
    assert callable(module.set_poison_outputs)
    # loading it registered the CUDA kernels of mmvim's ops
    for name in ('scan_fwd', 'scan_bwd', 'conv_silu'):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(
            f'mmvim::{name}', 'CUDA'), name


def _inputs(batch, dim, state, length, groups, dtype, seed, softplus=True):
    """Data in ``dtype`` (quantised once, so the reference sees the same
    values), weights in float32."""
    g = torch.Generator().manual_seed(seed)
    bc = (batch, state, length) if groups is None else (batch, groups, state,
                                                       length)
    delta = torch.randn(batch, dim, length, generator=g) * .5 - 1
    delta_bias = torch.randn(dim, generator=g) * .5
    if not softplus:  # the raw delta must be positive to stay stable
        delta, delta_bias = delta.abs() * .2, delta_bias.abs()
    return dict(
        u=torch.randn(batch, dim, length, generator=g).to(dtype),
        delta=delta.to(dtype),
        A=-torch.rand(dim, state, generator=g) * 4 - .1,
        B=torch.randn(*bc, generator=g), C=torch.randn(*bc, generator=g),
        D=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, length, generator=g).to(dtype),
        delta_bias=delta_bias)


def _rel(a, b):
    """||a - b|| / ||b|| (||a|| where b is exactly zero)."""
    diff = (a.detach().cpu().double() - b.detach().double()).norm().item()
    scale = b.double().norm().item()
    return diff / scale if scale > 0 else diff


# (forward, gradients) relative L2 bounds; the reference gets the same
# rounded inputs, so this is the kernel's own rounding of outputs and sums
TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.float16: (1e-3, 3e-3),
             torch.bfloat16: (8e-3, 2e-2)}
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
ALL = dict(z=True, D=True, delta_bias=True, softplus=True, last=True)
NONE = dict(z=False, D=False, delta_bias=False, softplus=False, last=True)

# (dtype, batch, dim, N, L, groups, options): dims of 24 / 40 / 48 leave
# lanes of a warp idle, 160 a second block mostly idle
SINGLE_CASES = [
    (F32, 2, 40, 16, 1, None, ALL),
    (F32, 2, 64, 5, 7, 2, NONE),
    (F32, 1, 160, 1, 197, 4, dict(ALL, D=False, delta_bias=False)),
    (F32, 1, 48, 24, 197, None, dict(ALL, z=False)),
    (F32, 1, 40, 64, 2049, None, ALL),
    (F32, 1, 24, 5, 6085, 2, ALL),
    (F16, 2, 40, 16, 197, 2, ALL),
    (F16, 1, 64, 24, 2049, None, dict(NONE, z=True, last=False)),
    (F16, 1, 24, 64, 7, 4, dict(ALL, softplus=False)),
    (BF16, 2, 96, 16, 197, None, ALL),
    (BF16, 1, 40, 64, 7, 4, dict(NONE, D=True)),
    (BF16, 1, 32, 1, 2049, None, dict(ALL, delta_bias=False)),
    (BF16, 1, 48, 5, 1, 2, dict(ALL, last=False)),
    (F32, 1, 16, 256, 300, None, ALL),  # Mamba's largest N, two tiles
]


def _case_id(case):
    dtype, batch, dim, state, length, groups, opts = case
    on = '+'.join(k for k, v in opts.items() if v) or 'bare'
    return (f'{str(dtype)[6:]}-b{batch}-E{dim}-N{state}-L{length}-'
            f'G{groups or 0}-{on}')


@pytest.mark.parametrize('case', SINGLE_CASES, ids=_case_id)
@pytest.mark.parametrize('reverse', [False, True], ids=['fwd', 'rev'])
def test_scan_matches_reference(case, reverse):
    dtype, batch, dim, state, length, groups, opts = case
    x = _inputs(batch, dim, state, length, groups, dtype,
                seed=length + dim + state, softplus=opts['softplus'])
    for key in ('z', 'D', 'delta_bias'):
        if not opts[key]:
            x[key] = None
    present = {k: v for k, v in x.items() if v is not None}
    leaves = {k: v.to(DEVICE).requires_grad_(True) for k, v in present.items()}
    ref_leaves = {k: v.double().requires_grad_(True)
                  for k, v in present.items()}
    kw = dict(delta_softplus=opts['softplus'],
              return_last_state=opts['last'], reverse=reverse)
    out = selective_scan_kernel(**leaves, **kw, kind=KIND)
    ref = selective_scan_ref(**ref_leaves, **kw)
    (y, last), (y_ref, last_ref) = (out, ref) if opts['last'] else \
        ((out, None), (ref, None))
    fwd_tol, grad_tol = TOLERANCE[dtype]
    assert y.dtype == dtype and y.device.type == DEVICE
    assert _rel(y, y_ref) < fwd_tol, _rel(y, y_ref)
    if opts['last']:
        assert last.dtype == torch.float32
        assert _rel(last, last_ref) < fwd_tol, _rel(last, last_ref)
    grad = torch.randn(y_ref.shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(y, list(leaves.values()),
                                grad.to(dtype).to(DEVICE))
    ref_grads = torch.autograd.grad(y_ref, list(ref_leaves.values()),
                                    grad.to(dtype).double())
    for name, g, r in zip(leaves, grads, ref_grads):
        assert g.dtype == leaves[name].dtype and g.shape == r.shape, name
        assert _rel(g, r) < grad_tol, (name, _rel(g, r))


# (dtype, N, L, groups, with z, divide_out)
BI_CASES = [
    (F32, 16, 1, None, True, True),
    (F32, 16, 197, 2, True, True),
    (F32, 16, 2049, None, True, True),
    (F32, 64, 7, 4, True, False),
    (F16, 24, 197, None, True, True),
    (BF16, 5, 197, 2, False, True),
    (BF16, 1, 7, None, True, True),
]

_BI_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D')


@pytest.mark.parametrize(
    'dtype,state,length,groups,with_z,divide_out', BI_CASES,
    ids=lambda v: str(v)[6:] if isinstance(v, torch.dtype) else str(v))
def test_bi_scan_matches_reference(dtype, state, length, groups, with_z,
                                   divide_out):
    batch, dim = 2, 40
    f = _inputs(batch, dim, state, length, groups, dtype, seed=length)
    b = _inputs(batch, dim, state, length, groups, dtype, seed=length + 1)
    tensors = [f[k] for k in _BI_NAMES] + [b[k] for k in _BI_NAMES] + \
        [f['delta_bias'], b['delta_bias']] + ([f['z']] if with_z else [])
    leaves = [t.to(DEVICE).requires_grad_(True) for t in tensors]
    ref_leaves = [t.double().requires_grad_(True) for t in tensors]

    def run(fn, xs, **kw):
        return fn(*xs[:12], delta_bias=xs[12], delta_bias_b=xs[13],
                  z=xs[14] if with_z else None, delta_softplus=True,
                  divide_out=divide_out, **kw)

    out = run(bi_selective_scan_kernel, leaves, kind=KIND)
    ref = run(bi_selective_scan_ref, ref_leaves)
    fwd_tol, grad_tol = TOLERANCE[dtype]
    assert out.dtype == dtype and _rel(out, ref) < fwd_tol, _rel(out, ref)
    grad = torch.randn(ref.shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(2)).to(dtype)
    grads = torch.autograd.grad(out, leaves, grad.to(DEVICE))
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g.dtype == leaves[i].dtype, i
        assert _rel(g, r) < grad_tol, (i, _rel(g, r))


def _threads(launch):
    return (launch['grid'][0] * launch['grid'][1] * launch['grid'][2] *
            launch['block'][0] * launch['block'][1] * launch['block'][2])


def _mamba_ssm_threads(batch, dim, length):
    """Threads of one mamba_ssm selective-scan launch (one direction): a
    block of 32 / 64 / 128 threads per (batch, channel), by sequence length
    (state-spaces/mamba, csrc/selective_scan/selective_scan_fwd_kernel.cuh,
    selective_scan_fwd_cuda)."""
    per_block = 32 if length <= 512 else 64 if length <= 1024 else 128
    return batch * dim * per_block


@pytest.mark.parametrize('name,batch,length,min_threads', [
    ('vim-ti-1248', 8, 6085, 100_000),
    ('vim-ti-224', 128, 197, _mamba_ssm_threads(128, 384, 197)),
])
def test_launch_geometry_keeps_vim_shapes_busy(name, batch, length,
                                               min_threads):
    """The scan is parallel over tokens as well as channels: read from the
    emulator's launch records (a dry run: nothing is computed) for Vim-Ti's
    bidirectional scan, E = 384, N = 16, forward and backward."""
    dim, state = 384, 16
    big = torch.zeros(1).expand(batch, dim, length)  # no memory behind it
    bc = torch.zeros(1).expand(batch, state, length)
    weights = [torch.zeros(dim, state), bc, bc, torch.zeros(dim)]
    leaf = torch.zeros(1, requires_grad=True)
    with simt_launch_records() as launches:
        out = bi_selective_scan_kernel(leaf.expand_as(big), big, *weights,
                                       big, big, *weights, z=big,
                                       delta_softplus=True, kind='simt')
        torch.autograd.grad(out, leaf, torch.zeros(1).expand(out.shape))
    kernels = [r['kernel'].split('<')[0].split('::')[-1] for r in launches]
    assert kernels == ['scan_fwd_kernel', 'scan_bwd_kernel',
                       'gate_grad_kernel'], kernels
    fwd, bwd = launches[0], launches[1]
    # 8 channels x token threads x 2 directions / 1 direction per block
    assert fwd['block'][0] == 8 and fwd['block'][2] == 2
    assert bwd['block'][0] == 8 and bwd['grid'][2] == 2
    assert fwd['grid'][:2] == (dim // 8, batch)
    for launch in (fwd, bwd):
        assert _threads(launch) >= min_threads, (name, launch)
    print(name, 'threads in flight: forward', _threads(fwd), 'backward',
          _threads(bwd), 'mamba_ssm per direction',
          _mamba_ssm_threads(batch, dim, length))


# --- the GPU default: a self-check per device, a fallback that says why ---

def test_self_check_passes_on_the_kernel():
    from mmvim.ops.selective_scan import kernel_functions, self_check
    assert self_check(kernel_functions(KIND), torch.device(DEVICE)) is None


def _faulty(functions, fault):
    """A kernel's (scan, bi_scan) functions with one deliberate error."""
    scan, bi_scan = functions

    def bi_wrong(*args, **kwargs):
        if fault == 'gradient of B':
            args[3].register_hook(lambda grad: grad * 1.01)
        out = bi_scan(*args, **kwargs)
        return out * 1.01 if fault == 'output' else out

    return scan, bi_wrong


@pytest.mark.parametrize('fault,message', [
    ('output', r'bidirectional output differs from the reference by 0\.01 '),
    ('gradient of B', r'gradient of B differs from the reference by 0\.01 '),
])
def test_self_check_names_what_is_wrong(fault, message):
    from mmvim.ops.selective_scan import kernel_functions, self_check
    result = self_check(_faulty(kernel_functions(KIND), fault),
                        torch.device(DEVICE))
    assert result is not None and re.match(message, result), \
        result


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """The dispatcher with empty caches; 'auto' uses the emulated CUDA
    kernel on CPU tensors, as it uses the CUDA kernel on a GPU."""
    dispatch = importlib.import_module('mmvim.ops.selective_scan')
    monkeypatch.delenv('MMVIM_SCAN_IMPL', raising=False)
    monkeypatch.setattr(dispatch, 'AUTO_KINDS',
                        {'cpu': 'simt', 'cuda': 'cuda'})
    for cache in ('_build_errors', '_self_checks'):
        monkeypatch.setattr(dispatch, cache, {})
    monkeypatch.setattr(dispatch, '_warned', set())
    return dispatch


def _bi_inputs():
    f = _inputs(1, 40, 16, 9, None, F32, seed=7)
    b = _inputs(1, 40, 16, 9, None, F32, seed=8)
    return [f[k] for k in _BI_NAMES] + [b[k] for k in _BI_NAMES], f['z']


def test_auto_uses_a_kernel_that_passes(fresh_dispatch, recwarn):
    assert fresh_dispatch.select_scan_impl('cpu') == 'simt'
    args, z = _bi_inputs()
    torch.testing.assert_close(
        fresh_dispatch.bi_selective_scan(*args, z=z),
        bi_selective_scan_kernel(*args, z=z, kind='simt'), rtol=0, atol=0)
    assert not [w for w in recwarn if 'mmvim' in str(w.message)]


def test_auto_falls_back_when_the_self_check_fails(fresh_dispatch,
                                                   monkeypatch):
    real = fresh_dispatch.kernel_functions
    monkeypatch.setattr(
        fresh_dispatch, 'kernel_functions',
        lambda kind: _faulty(real(kind), 'output') if kind == 'simt' else
        real(kind))
    with pytest.warns(RuntimeWarning,
                      match=r'the simt selective-scan kernel failed its '
                      r'self-check on cpu: bidirectional output differs .*'
                      r'scans on cpu use the pure-PyTorch reference'):
        assert fresh_dispatch.select_scan_impl('cpu') == 'ref'
    args, z = _bi_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # warned once only
        out = fresh_dispatch.bi_selective_scan(*args, z=z)
    torch.testing.assert_close(out, bi_selective_scan_ref(*args, z=z),
                               rtol=0, atol=0)
    # a forced kernel that fails its check is an error, not a fallback
    monkeypatch.setenv('MMVIM_SCAN_IMPL', 'simt')
    with pytest.raises(RuntimeError, match=r'MMVIM_SCAN_IMPL=simt, but the '
                       r'simt selective-scan kernel failed its self-check'):
        fresh_dispatch.select_scan_impl('cpu')


def test_gpu_without_a_buildable_kernel_warns_what_it_costs(fresh_dispatch):
    from mmvim.ops.extension_loader import ExtensionBuildError
    fresh_dispatch._build_errors['cuda'] = ExtensionBuildError(
        'could not build the cuda selective_scan kernel: nvcc not found')
    device = torch.device('cuda', 0)
    with pytest.warns(RuntimeWarning) as record:
        assert fresh_dispatch.select_scan_impl(device) == 'ref'
        assert fresh_dispatch.select_scan_impl(device) == 'ref'
    assert len(record) == 1
    message = str(record[0].message)
    for part in ('nvcc not found', 'scans on cuda:0 use the pure-PyTorch '
                 'reference', '2.8 GB per Vim-Ti layer', 'set CUDA_HOME'):
        assert part in message, message
