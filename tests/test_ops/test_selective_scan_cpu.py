"""The C++ CPU kernel against the float64 reference on fresh random data.

MMVIM_SCAN_POISON=1 makes the kernel start every output as NaN, so an
element it does not write fails the comparison.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mmvim.ops import (bi_selective_scan, bi_selective_scan_ref,
                       select_scan_impl, selective_scan_ref)
from mmvim.ops.selective_scan_kernel import (bi_selective_scan_kernel,
                                             build_kernel,
                                             selective_scan_kernel)
from compilers import require_compiler


TINY_OP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tiny_op')


@pytest.fixture(scope='module', autouse=True)
def kernel():
    """Skipped only where no C++ compiler exists: a failed build raises."""
    require_compiler('cpu')
    return build_kernel('cpu')


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setenv('MMVIM_SCAN_POISON', '1')


def _inputs(batch, dim, state, length, groups=None, seed=0,
            dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    bc = (batch, state, length) if groups is None else (batch, groups, state,
                                                       length)

    def randn(*shape, scale=1.):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) *
                scale).to(dtype)

    return dict(
        u=randn(batch, dim, length),
        delta=randn(batch, dim, length, scale=.5) - 1.,
        A=-torch.rand(dim, state, generator=g, dtype=torch.float64).to(
            torch.float32 if dtype != torch.float64 else dtype) * 4 - .1,
        B=randn(*bc), C=randn(*bc),
        D=randn(dim).to(torch.float32 if dtype != torch.float64 else dtype),
        z=randn(batch, dim, length),
        delta_bias=randn(dim, scale=.5).to(
            torch.float32 if dtype != torch.float64 else dtype))


def _double(x):
    return {k: v.double() for k, v in x.items()}


def _rel(a, b):
    """||a - b|| / ||b||, or ||a|| where b is exactly zero (e.g. dA at L=1)."""
    diff = (a.double() - b.double()).norm().item()
    scale = b.double().norm().item()
    return diff / scale if scale > 0 else diff


# (batch, dim, state, length, groups): L from 1 to the 6085 tokens of a
# 1248x1248 image; channel counts that do and do not fill the SIMD lanes
CASES = [
    (2, 24, 16, 1, None),
    (2, 24, 16, 7, 2),
    (2, 40, 16, 197, None),
    (1, 32, 8, 2048, 4),
    (1, 20, 16, 2049, None),
    (1, 16, 16, 6085, None),
]


@pytest.mark.parametrize('batch,dim,state,length,groups', CASES)
@pytest.mark.parametrize('options', [
    dict(z=True, D=True, delta_bias=True, delta_softplus=True),
    dict(z=False, D=False, delta_bias=False, delta_softplus=False),
])
def test_forward_matches_reference(batch, dim, state, length, groups,
                                   options):
    x = _inputs(batch, dim, state, length, groups,
                seed=length + dim + len(options))
    for key in ('z', 'D', 'delta_bias'):
        if not options[key]:
            x[key] = None
    softplus = options['delta_softplus']
    if not softplus:  # keep the recurrence stable without softplus
        x['delta'] = x['delta'].abs() * .2
    args = {k: v for k, v in x.items()}
    for reverse in (False, True):
        y, last = selective_scan_kernel(**args, delta_softplus=softplus,
                                     return_last_state=True, reverse=reverse)
        y_ref, last_ref = selective_scan_ref(
            **{k: None if v is None else v.double() for k, v in args.items()},
            delta_softplus=softplus, return_last_state=True, reverse=reverse)
        assert y.dtype == torch.float32 and torch.isfinite(y).all()
        assert _rel(y, y_ref) < 2e-5, (reverse, _rel(y, y_ref))
        assert _rel(last, last_ref) < 2e-5


@pytest.mark.parametrize('batch,dim,state,length,groups', [
    (2, 24, 16, 7, None), (2, 40, 16, 197, 2), (1, 20, 16, 2049, None)])
@pytest.mark.parametrize('reverse', [False, True])
def test_gradients_match_reference(batch, dim, state, length, groups,
                                   reverse):
    x = _inputs(batch, dim, state, length, groups, seed=3)
    leaves = {k: v.double().requires_grad_(True) for k, v in x.items()}
    leaves32 = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    y_ref = selective_scan_ref(**leaves, delta_softplus=True, reverse=reverse)
    y = selective_scan_kernel(**leaves32, delta_softplus=True, reverse=reverse)
    grad = torch.randn_like(y_ref)
    ref_grads = torch.autograd.grad(y_ref, list(leaves.values()), grad)
    grads = torch.autograd.grad(y, list(leaves32.values()), grad.float())
    for name, g, r in zip(leaves, grads, ref_grads):
        assert g.shape == r.shape and g.dtype == torch.float32, name
        assert _rel(g, r) < 1e-4, (name, _rel(g, r))


def test_float64_is_exact_and_gradcheck():
    x = _double(_inputs(2, 8, 4, 9, groups=2, seed=5))
    y = selective_scan_kernel(**x, delta_softplus=True)
    torch.testing.assert_close(y, selective_scan_ref(**x, delta_softplus=True),
                               rtol=1e-12, atol=1e-12)
    small = {k: v.requires_grad_(True)
             for k, v in _double(_inputs(1, 3, 2, 5, groups=None, seed=6)).items()}
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan_kernel(*a, delta_softplus=True, reverse=True),
        tuple(small.values()))


def _bi_args(batch, dim, state, length, seed, dtype=torch.float32):
    f = _inputs(batch, dim, state, length, seed=seed, dtype=dtype)
    b = _inputs(batch, dim, state, length, seed=seed + 1, dtype=dtype)
    return f, b


def _flip_composition(f, b, z):
    """What the reference code does: flip, scan, flip back."""
    y_f = selective_scan_ref(f['u'], f['delta'], f['A'], f['B'], f['C'],
                             f['D'], z, f['delta_bias'], True)
    y_b = selective_scan_ref(b['u'].flip(-1), b['delta'].flip(-1), b['A'],
                             b['B'].flip(-1), b['C'].flip(-1), b['D'],
                             z.flip(-1), b['delta_bias'], True).flip(-1)
    return (y_f + y_b) / 2


@pytest.mark.parametrize('length', [1, 7, 197, 2049])
def test_bi_scan_equals_flip_composition(length):
    f, b = _bi_args(2, 24, 16, length, seed=length)
    z = f['z']
    names = ['u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias']
    f64 = {k: f[k].double().requires_grad_(True) for k in names}
    b64 = {k: b[k].double().requires_grad_(True) for k in names}
    z64 = z.double().requires_grad_(True)
    f32 = {k: f[k].clone().requires_grad_(True) for k in names}
    b32 = {k: b[k].clone().requires_grad_(True) for k in names}
    z32 = z.clone().requires_grad_(True)

    ref = _flip_composition(f64, b64, z64)
    out = bi_selective_scan_kernel(
        *[f32[k] for k in names[:6]], *[b32[k] for k in names[:6]], z=z32,
        delta_bias=f32['delta_bias'], delta_bias_b=b32['delta_bias'],
        delta_softplus=True)
    assert _rel(out, ref) < 2e-5
    grad = torch.randn_like(ref)
    ref_leaves = list(f64.values()) + list(b64.values()) + [z64]
    leaves = list(f32.values()) + list(b32.values()) + [z32]
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad)
    grads = torch.autograd.grad(out, leaves, grad.float())
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert _rel(g, r) < 1e-4, (i, _rel(g, r))


def test_bi_scan_gradcheck_and_no_divide():
    f, b = _bi_args(1, 3, 2, 5, seed=9, dtype=torch.float64)
    names = ['u', 'delta', 'A', 'B', 'C', 'D']
    args = [f[k] for k in names] + [b[k] for k in names] + [
        f['z'], f['delta_bias'], b['delta_bias']]
    args = [a.requires_grad_(True) for a in args]
    assert torch.autograd.gradcheck(
        lambda *a: bi_selective_scan_kernel(*a[:12], z=a[12], delta_bias=a[13],
                                         delta_bias_b=a[14],
                                         delta_softplus=True), tuple(args))
    full = bi_selective_scan_kernel(*args[:12], divide_out=False)
    half = bi_selective_scan_kernel(*args[:12])
    torch.testing.assert_close(full, 2 * half)
    torch.testing.assert_close(full, bi_selective_scan_ref(*args[:12],
                                                           divide_out=False))


def test_half_precision_inputs_keep_their_dtype():
    x = _inputs(2, 16, 16, 33, seed=11)
    x16 = dict(x, u=x['u'].bfloat16(), delta=x['delta'].bfloat16(),
               z=x['z'].bfloat16())
    y = selective_scan_kernel(**x16, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    ref = selective_scan_ref(**_double(x16), delta_softplus=True)
    assert _rel(y, ref) < 1e-2


def test_dispatcher_prefers_the_kernel(monkeypatch):
    monkeypatch.delenv('MMVIM_SCAN_IMPL', raising=False)
    assert select_scan_impl('cpu') == 'cpu'
    f, b = _bi_args(1, 16, 16, 11, seed=2)
    args = [f[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D')] + \
        [b[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D')]
    torch.testing.assert_close(bi_selective_scan(*args, z=f['z']),
                               bi_selective_scan_kernel(*args, z=f['z']))
    monkeypatch.setenv('MMVIM_SCAN_IMPL', 'cuda')
    with pytest.raises(RuntimeError, match='MMVIM_SCAN_IMPL=cuda takes cuda '
                       'tensors but the inputs are on cpu'):
        select_scan_impl('cpu')


def _run(code, env):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_concurrent_first_use_builds_once(tmp_path):
    """Two processes (DDP ranks) start together on an empty build cache:
    one builds under the loader's file lock, the other waits and loads it
    (a tiny extension stands in for the kernels: same loader, seconds)."""
    env = dict(os.environ, MMVIM_EXTENSIONS_DIR=str(tmp_path))
    code = f"""
        from mmvim.ops.extension_loader import build_extension
        print(build_extension('tiny_op', ['tiny_op.cpp'], kind='cpu',
                              csrc={TINY_OP!r}).answer())
    """
    procs = [subprocess.Popen([sys.executable, '-c', textwrap.dedent(code)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert all(out.strip() == '42' for out, _ in outputs), outputs
    builds = sum(err.count('building the cpu tiny_op kernel')
                 for _, err in outputs)
    assert builds == 1, outputs
    assert len(list(tmp_path.iterdir())) == 1  # one hashed build directory
    # a later process reuses the build silently
    again = _run(code, env)
    assert again.returncode == 0 and 'building' not in again.stderr
    # a build interrupted inside torch (Ctrl-C) leaves torch's own lock
    # file, on which torch would wait forever: the next process removes it
    (build_dir, ) = tmp_path.iterdir()
    (build_dir / 'lock').touch()
    after_interrupt = _run(code, env)
    assert after_interrupt.returncode == 0, after_interrupt.stderr
    assert after_interrupt.stdout.strip() == '42'
    assert 'removing the stale build lock' in after_interrupt.stderr
    assert not (build_dir / 'lock').exists()


def test_failed_build_falls_back_with_a_warning(tmp_path):
    env = dict(os.environ, MMVIM_EXTENSIONS_DIR=str(tmp_path),
               CXX='/nonexistent/c++')
    result = _run("""
        import torch
        from mmvim.ops import select_scan_impl, selective_scan
        u = torch.randn(1, 16, 5)
        selective_scan(u, u.abs(), -torch.ones(16, 4), torch.randn(1, 4, 5),
                       torch.randn(1, 4, 5))
        print('impl', select_scan_impl('cpu'))
    """, env)
    assert result.returncode == 0, result.stderr
    assert 'impl ref' in result.stdout
    assert 'could not build the cpu selective_scan kernel: /bin/sh: 1: ' \
        '/nonexistent/c++: not found' in result.stderr, result.stderr
    assert 'scans on cpu use the pure-PyTorch reference' in result.stderr


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_special_functions_of_the_vector_code(kernel, dtype):
    """exp2, exp, sigmoid, silu and softplus as the kernel computes them
    (its Vec type: AVX-512 or portable) against float64 torch: relative
    error where the result is a normal float, exact exp2(0) = 1 (a decay
    of 1 must not grow the state), and infinities and NaN."""
    inf, nan = float('inf'), float('nan')
    grid = torch.cat([torch.linspace(-120, 120, 4801, dtype=torch.float64),
                      torch.tensor([0., -0., 1e-30, -1e-30, 0.5, -0.5])])
    x = grid.to(dtype)
    got = kernel.special_functions(x)
    x64 = x.double()
    want = [torch.exp2(x64), torch.exp(x64), torch.sigmoid(x64),
            torch.nn.functional.silu(x64),
            torch.logaddexp(x64, torch.zeros_like(x64))]  # softplus, exact
    single = dtype == torch.float32
    for name, g, w in zip(['exp2', 'exp', 'sigmoid', 'silu', 'softplus'],
                          got, want):
        assert g.dtype == dtype and g.shape == x.shape
        tiny = w.abs() <= 1e-30
        over = w.abs() > torch.finfo(dtype).max
        checked = ~tiny & ~over
        # float32 exp(x) = exp2(x log2 e): that product's rounding (and
        # log2 e's) adds up to |x| * 1e-7 to every function built on exp
        bound = (4e-7 + (0 if name == 'exp2' else 1e-7) * x64.abs()
                 if single else torch.full_like(x64, 1e-13))
        err = (g.double() - w).abs() / w.abs()
        assert (err <= bound)[checked].all(), (name, err[checked].max())
        assert ((g.double() - w).abs() < 1e-29)[tiny].all(), name
        assert (g[over] == torch.inf).all(), name
    exp2, exp, sigmoid, silu, softplus = kernel.special_functions(
        torch.tensor([0., inf, -inf, nan], dtype=dtype))
    assert exp2[0] == 1 and exp[0] == 1
    for f in (exp2, exp):
        assert f[1] == inf and f[2] == 0
    assert sigmoid[1] == 1 and sigmoid[2] < 1e-30
    assert silu[1] == inf
    assert softplus[1] == inf and softplus[2] == 0
    for f in (exp2, exp, sigmoid, silu, softplus):
        assert torch.isnan(f[3])


def test_portable_vector_code_without_avx512():
    """The kernel's vector type has an AVX-512 implementation and a portable
    one (any other CPU, float64). This machine's build takes AVX-512 where
    the CPU has it; the forward, gradient and mixer tests of this file and
    test_bimamba_inner.py then run again, in a subprocess, on a build for
    x86-64-v2 (SSE4.2: no AVX; MMVIM_CPU_ARCH)."""
    if os.uname().machine != 'x86_64':
        pytest.skip('the AVX-512 code exists on x86-64 only')
    with open('/proc/cpuinfo') as f:
        has_avx512 = ' avx512f' in next(
            line for line in f if line.startswith('flags'))
    if not os.environ.get('MMVIM_CPU_ARCH'):  # a native build here
        assert build_kernel('cpu').simd == ('avx512' if has_avx512 else
                                            'portable')
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, MMVIM_CPU_ARCH='x86-64-v2')
    check = subprocess.run(
        [sys.executable, '-c', 'from mmvim.ops.selective_scan_kernel import '
         "build_kernel; print(build_kernel('cpu').simd)"],
        env=env, capture_output=True, text=True, timeout=600)
    assert check.returncode == 0 and check.stdout.split()[-1] == 'portable', \
        check.stderr
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         os.path.join(here, 'test_selective_scan_cpu.py'),
         os.path.join(here, 'test_bimamba_inner.py'), '-k',
         '(forward_matches or gradients_match or bi_scan_equals or '
         'float64_is_exact or mixer or special_functions) and not simt '
         'and not cuda'],
        env=env, capture_output=True, text=True, timeout=900, cwd=here)
    assert result.returncode == 0, result.stdout[-3000:]
    assert ' passed' in result.stdout and 'skipped' not in result.stdout

