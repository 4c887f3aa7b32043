"""Bad arguments to the compiled scan kernels are clear errors, never an
out-of-bounds read, a division by zero or uninitialised output.

The checks live once in ``selective_scan_interface.h``; they run here on the
CPU kernel and on the CUDA kernel under the SIMT emulation, called directly
(the Python wrappers would reshape or copy some of these away).
"""
import types

import pytest
import torch

from mmvim.ops.selective_scan_kernel import build_kernel, kernel_ops
from compilers import require_compiler

KINDS = ['cpu', 'simt']


@pytest.fixture(params=KINDS)
def kernel(request):
    """The kernel's ops (scan_fwd, scan_bwd) and its extension module."""
    require_compiler(request.param)
    module = build_kernel(request.param)
    ops = kernel_ops(request.param)
    return types.SimpleNamespace(kind=request.param, module=module,
                                 scan_fwd=ops.scan_fwd, scan_bwd=ops.scan_bwd)


def _direction(batch=2, length=5, dim=8, state=4, groups=1, conv=True):
    """A valid direction as a dict of the kernel's list entries."""
    g = torch.Generator().manual_seed(0)
    return dict(
        x=torch.randn(batch, length, dim, generator=g),
        conv_weight=torch.randn(dim, 4, generator=g) if conv else None,
        conv_bias=torch.randn(dim, generator=g) if conv else None,
        delta=torch.rand(batch, length, dim, generator=g),
        A=-torch.rand(dim, state, generator=g),
        B=torch.randn(batch, length, groups, state, generator=g),
        C=torch.randn(batch, length, groups, state, generator=g),
        D=torch.randn(dim, generator=g), bias=torch.randn(dim, generator=g))


NAMES = ['x', 'conv_weight', 'conv_bias', 'delta', 'A', 'B', 'C', 'D',
         'bias']


def _listed(d):
    return [d[name] for name in NAMES]


def _dirs(d, second=None):
    """The 18 direction arguments of the ops."""
    return _listed(d) + (_listed(second) if second else [None] * 9)


def _fwd(kernel, d, z=None, last=True, second=None):
    return kernel.scan_fwd(*_dirs(d, second), z, False, True, 1.0, last)


@pytest.mark.parametrize('name,value,message', [
    ('D', torch.ones(7), r'D must be \(dim,\) = \(8,\), got \[7\]'),
    ('D', torch.ones(2, 8), r'D must be \(dim,\) = \(8,\), got \[2, 8\]'),
    ('bias', torch.ones(9), r'delta_bias must be \(dim,\) = \(8,\)'),
    ('conv_bias', torch.ones(3), r'conv_bias must be \(dim,\) = \(8,\)'),
    ('B', torch.ones(2, 5, 0, 4), r'B has 0 groups, which must be at least '
     r'1 and divide the 8 channels'),
    ('C', torch.ones(2, 5, 3, 4), r'C has 3 groups, which must be at least '
     r'1 and divide the 8 channels'),
    ('C', torch.ones(2, 5, 1, 3), r'C must be \(batch, length, groups, '
     r'state\) = \(2, 5, G, 4\), got \[2, 5, 1, 3\]'),
    ('A', torch.ones(8, 4, 1), r'A must be \(dim, state\)'),
    ('delta', torch.ones(2, 6, 8), r'x and delta of every direction must be'),
    ('x', torch.ones(2, 5, 8, dtype=torch.int32), r'x must be float'),
    ('A', torch.ones(8, 4, dtype=torch.float64), r'A must be Float'),
    ('conv_weight', torch.ones(8, 1, 4), r'conv_weight must be \(dim, '
     r'width\) = \(8, W\), got \[8, 1, 4\]'),
    ('conv_weight', None, r'conv_bias without conv_weight'),
    ('D', torch.ones(16)[::2], r'D must be contiguous'),
])
def test_bad_forward_arguments_are_named(kernel, name, value, message):
    d = dict(_direction(), **{name: value})
    with pytest.raises(RuntimeError, match=message):
        _fwd(kernel, d)


def test_the_two_directions_must_agree(kernel):
    with pytest.raises(RuntimeError, match=r'a conv in one direction only'):
        _fwd(kernel, _direction(), second=_direction(conv=False))
    with pytest.raises(RuntimeError, match=r'B must have the same groups in '
                       r'both directions'):
        _fwd(kernel, _direction(), second=_direction(groups=2))
    with pytest.raises(RuntimeError, match=r'z must be \(batch, length, dim\)'
                       r' = \[2, 5, 8\], got \[2, 8, 5\]'):
        _fwd(kernel, _direction(), z=torch.ones(2, 8, 5))


def test_a_conv_wider_than_the_cuda_kernel_fuses(kernel):
    weight = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    d = dict(_direction(), conv_weight=weight)
    if kernel.kind == 'cpu':  # the CPU kernel takes any width, all 5 taps
        from mmvim.ops import causal_conv1d, selective_scan_ref
        out, _, _ = _fwd(kernel, d)
        u = causal_conv1d(d['x'].transpose(1, 2), weight, d['conv_bias'],
                          'silu')
        want = selective_scan_ref(
            u, d['delta'].transpose(1, 2), d['A'], d['B'].permute(0, 2, 3, 1),
            d['C'].permute(0, 2, 3, 1), d['D'], delta_bias=d['bias'],
            delta_softplus=True)
        torch.testing.assert_close(out, want.transpose(1, 2), rtol=1e-4,
                                   atol=1e-5)
    else:
        with pytest.raises(RuntimeError, match=r'a conv of width 5 is wider '
                           r'than the 4 this kernel fuses'):
            _fwd(kernel, d)


def test_zero_tokens_give_a_zero_last_state(kernel):
    kernel.module.set_poison_outputs(True)
    try:
        out, _, last = _fwd(kernel, _direction(length=0))
    finally:
        kernel.module.set_poison_outputs(False)
    assert out.shape == (2, 0, 8)
    assert last.shape == (2, 8, 4) and torch.equal(last, torch.zeros(2, 8, 4))


def test_bad_backward_buffers_are_named(kernel):
    d = _direction()
    z = torch.randn(2, 5, 8)
    out, states, _ = _fwd(kernel, d, z=z, last=False)
    dout = torch.ones_like(out)

    def bwd(dout, states):
        return kernel.scan_bwd(*_dirs(d), z, dout, states, False, True, 1.0)

    grads = bwd(dout, states)  # the good call works
    assert len(grads) == 8 and all(torch.isfinite(g).all() for g in grads)
    if states.numel() > 0:  # the CUDA kernel's tile states
        with pytest.raises(RuntimeError, match=r'states must be contiguous'):
            bwd(dout, torch.stack([states, states], 1)[:, 0])
        with pytest.raises(RuntimeError, match=r'states must be the Float '
                           r'tensor of \d+ elements the forward returned'):
            bwd(dout, states[:-1])
    with pytest.raises(RuntimeError, match=r'the output gradient must be'):
        bwd(dout[:, :4], states)
