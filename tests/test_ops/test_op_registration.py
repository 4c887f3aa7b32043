"""The scan kernels as PyTorch operators (``mmvim.ops.library``).

``torch.library.opcheck`` checks each op's schema, its fake (meta)
implementation against the kernel's real outputs, its autograd
registration and its tracing by AOTAutograd (with dynamic shapes), on the
CPU kernel and on the CUDA kernel (under the SIMT emulation without a GPU);
``gradcheck`` checks the autograd formulas numerically in float64 (the CPU
kernel). The whole-model checks (``torch.compile(fullgraph=True)`` and
``torch.export``) are in tests/test_models/test_vim_compile.py.
"""
import pytest
import torch

from mmvim.ops import bimamba_inner
from mmvim.ops.library import scan_arguments
from mmvim.ops.selective_scan_kernel import (bi_selective_scan_kernel,
                                             kernel_ops,
                                             selective_scan_kernel)


def _direction(batch, length, dim, state, dtype, conv=False, groups=1,
               shared_b=False, seed=0, grad=True):
    """The nine kernel tensors of one direction (token-major, data in
    ``dtype``, weights in float32 unless dtype is float64)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.float64 if dtype == torch.float64 else torch.float32

    def make(*shape, dt=dtype, scale=1., shift=0.):
        t = torch.randn(*shape, generator=g) * scale + shift
        return t.to(dt).requires_grad_(grad)

    B = make(1, 1, dim, state) if shared_b else make(batch, length, groups,
                                                     state)
    return [
        make(batch, length, dim),
        make(dim, 4, dt=weight, scale=.5) if conv else None,
        make(dim, dt=weight, scale=.5) if conv else None,
        make(batch, length, dim, scale=.5, shift=-1.),
        (-torch.rand(dim, state, generator=g) * 2 - .1).to(
            weight).requires_grad_(grad),
        B,
        make(batch, length, groups, state),
        make(dim, dt=weight),
        make(dim, dt=weight, scale=.5),
    ]


def _data_dtype(kind):
    return torch.float64 if kind == 'cpu' else torch.float32


CASES = {
    # one direction, reverse, grouped B/C, z and the last state
    'one-direction': dict(ndirs=1, groups=2, reverse=True, z=True, last=True),
    # a constant (E, N) B, as (1, 1, E, N)
    'shared-B': dict(ndirs=1, shared_b=True, reverse=False, z=False,
                     last=False),
    # Vim's: two directions with the fused conv and the gate
    'two-directions-conv': dict(ndirs=2, conv=True, reverse=False, z=True,
                                last=False),
}


def _scan_args(kind, case, grad=True):
    dtype = _data_dtype(kind)
    batch, length, dim, state = 2, 11, 8, 4
    dirs = []
    for k in range(case['ndirs']):
        dirs += _direction(batch, length, dim, state, dtype,
                           conv=case.get('conv', False),
                           groups=case.get('groups', 1),
                           shared_b=case.get('shared_b', False), seed=k,
                           grad=grad)
    z = torch.randn(batch, length, dim, dtype=dtype).requires_grad_(grad) \
        if case['z'] else None
    return (*scan_arguments(dirs), z, case['reverse'], True, 0.5,
            case['last'])


@pytest.mark.parametrize('case', list(CASES))
def test_opcheck_scan_fwd(scan_kind, case):
    """Schema, fake tensor, autograd registration and AOT dispatch of
    scan_fwd (its backward: the scan_bwd op)."""
    kind, _ = scan_kind
    torch.library.opcheck(kernel_ops(kind).scan_fwd,
                          _scan_args(kind, CASES[case]))


def test_opcheck_scan_bwd_and_conv_silu(scan_kind):
    kind, _ = scan_kind
    ops = kernel_ops(kind)
    args = _scan_args(kind, CASES['two-directions-conv'], grad=False)
    out, states, _ = ops.scan_fwd(*args)
    *dirs, z = args[:19]
    torch.library.opcheck(
        ops.scan_bwd, (*dirs, z, torch.randn_like(out), states, False, True,
                       0.5))
    dtype = _data_dtype(kind)
    weight = torch.float64 if dtype == torch.float64 else torch.float32
    for reverse in (False, True):
        torch.library.opcheck(
            ops.conv_silu,
            (torch.randn(2, 9, 8, dtype=dtype, requires_grad=True),
             torch.randn(8, 3, dtype=weight, requires_grad=True),
             torch.randn(8, dtype=weight, requires_grad=True), reverse))


def _inner_args(kind, length=9, dims=8, state=4, rank=2, seed=0):
    """Arguments of mmvim::bimamba_inner for a small mixer."""
    g = torch.Generator().manual_seed(seed)
    dtype = _data_dtype(kind)
    inner = 2 * dims

    def make(*shape, scale=.3):
        return (torch.randn(*shape, generator=g) * scale).to(
            dtype).requires_grad_(True)

    params = []
    for _ in range(2):
        params += [make(inner, 1, 4), make(inner), make(rank + 2 * state,
                                                        inner),
                   make(inner, rank), make(inner), make(inner, state),
                   make(inner)]
    return (make(2, length, 2 * inner, scale=1.), params, rank, state, 0.5,
            kind)


def test_opcheck_bimamba_inner(scan_kind):
    kind, _ = scan_kind
    torch.library.opcheck(torch.ops.mmvim.bimamba_inner,
                          _inner_args(kind))


def test_gradcheck_of_the_operators():
    """The autograd formulas against finite differences in float64 (the
    CPU kernel): scan_fwd through the Mamba interface (one direction with
    a constant B, and two), conv_silu and bimamba_inner."""
    kind = 'cpu'
    g = torch.Generator().manual_seed(0)
    batch, dim, state, length = 1, 3, 2, 5

    def leaf(*shape, scale=1., shift=0.):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) *
                scale + shift).requires_grad_(True)

    def direction():
        return [leaf(batch, dim, length), leaf(batch, dim, length, scale=.5,
                                               shift=-1.),
                (-torch.rand(dim, state, generator=g, dtype=torch.float64) -
                 .1).requires_grad_(True),
                leaf(dim, state), leaf(batch, state, length), leaf(dim)]

    one, two = direction(), direction()
    z = leaf(batch, dim, length)
    assert torch.autograd.gradcheck(
        lambda *t: selective_scan_kernel(*t, z=z, delta_softplus=True,
                                         kind=kind), one)
    assert torch.autograd.gradcheck(
        lambda *t: bi_selective_scan_kernel(*t[:6], *t[6:12], z=t[12],
                                            delta_softplus=True, kind=kind),
        one + two + [z])
    ops = kernel_ops(kind)
    for reverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, w, b: ops.conv_silu(x, w, b, reverse),
            (leaf(2, 6, 3), leaf(3, 4), leaf(3)))
    xz, params, *rest = _inner_args(kind, length=4, dims=2, state=2, rank=1)
    assert torch.autograd.gradcheck(
        lambda xz, *p: torch.ops.mmvim.bimamba_inner(xz, list(p), *rest)[0],
        (xz, *params))


def test_bimamba_inner_takes_a_mixer_without_conv_bias(scan_kind):
    """The op takes a conv bias per direction; the function fills zeros
    for a missing one and gives the same output and gradients as a zero
    bias."""
    kind, _ = scan_kind
    xz, params, rank, state, _, _ = _inner_args(kind)
    no_bias = [p.detach().clone().requires_grad_(True) for p in params]
    zero_bias = [p.detach().clone().requires_grad_(True) for p in params]
    for i in (1, 8):
        no_bias[i] = None
        zero_bias[i] = torch.zeros_like(params[i])
    outs = []
    for ps in (no_bias, zero_bias):
        out = bimamba_inner(xz, ps[:7], ps[7:], rank, state, kind=kind)
        grads = torch.autograd.grad(out.sum(), [
            p for i, p in enumerate(ps) if i not in (1, 8)])
        outs.append((out, grads))
    assert torch.equal(outs[0][0], outs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))
