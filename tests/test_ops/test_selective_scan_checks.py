"""Bad arguments to the compiled scan kernels are clear errors, never an
out-of-bounds read, a division by zero or uninitialised output.

The checks live once in ``selective_scan_interface.h``; they run here on the
CPU kernel and on the CUDA kernel under the SIMT emulation, called directly
(the Python wrapper would reshape or copy some of these away).
"""
import pytest
import torch

from mmvim.ops.extension_loader import compiler_available
from mmvim.ops.selective_scan_kernel import build_kernel

KINDS = ['cpu', 'simt']


@pytest.fixture(params=KINDS)
def kernel(request):
    if not compiler_available(request.param):
        pytest.skip('no C++ compiler')
    return build_kernel(request.param)


def _args(batch=2, dim=8, length=5, state=4, groups=1):
    g = torch.Generator().manual_seed(0)
    return dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=torch.rand(batch, dim, length, generator=g),
        A=-torch.rand(dim, state, generator=g),
        Bt=torch.randn(batch, groups, length, state, generator=g),
        Ct=torch.randn(batch, groups, length, state, generator=g),
        D=torch.randn(dim, generator=g), bias=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, length, generator=g))


def _fwd(kernel, a, last=True):
    return kernel.scan_fwd(a['u'], a['delta'], a['A'], a['Bt'], a['Ct'],
                           a['D'], a['bias'], a['z'], True, False, last)


def _bwd(kernel, a, dout, acc):
    return kernel.scan_bwd(a['u'], a['delta'], a['A'], a['Bt'], a['Ct'],
                           a['D'], a['bias'], a['z'], dout, acc, True, False)


@pytest.mark.parametrize('name,value,message', [
    ('D', torch.ones(7), r'D must be \(dim,\) = \(8,\), got \[7\]'),
    ('D', torch.ones(2, 8), r'D must be \(dim,\) = \(8,\), got \[2, 8\]'),
    ('bias', torch.ones(9), r'delta_bias must be \(dim,\) = \(8,\)'),
    ('z', torch.ones(2, 8, 4), r'z must be \(batch, dim, length\) = '
     r'\[2, 8, 5\], got \[2, 8, 4\]'),
    ('Bt', torch.ones(2, 0, 5, 4), r'B and C have 0 groups, which must be '
     r'at least 1 and divide the 8 channels'),
    ('Bt', torch.ones(2, 3, 5, 4), r'3 groups, which must be at least 1 and '
     r'divide the 8 channels'),
    ('Ct', torch.ones(2, 1, 5, 3), r'B and C must be \(batch, groups, '
     r'length, state\) = \[2, 1, 5, 4\]'),
    ('A', torch.ones(8, 4, 1), r'A must be \(dim, state\)'),
    ('delta', torch.ones(2, 8, 6), r'u and delta of every direction must be'),
    ('u', torch.ones(2, 8, 5, dtype=torch.int32), r'u must be float'),
    ('A', torch.ones(8, 4, dtype=torch.float64), r'A must be Float'),
])
def test_bad_forward_arguments_are_named(kernel, name, value, message):
    a = dict(_args(), **{name: value})
    if name == 'Bt':  # C is checked with B: give it the same bad shape
        a['Ct'] = value
    with pytest.raises(RuntimeError, match=message):
        _fwd(kernel, a)


def test_zero_tokens_give_a_zero_last_state(kernel):
    kernel.set_poison_outputs(True)
    try:
        out, acc, last = _fwd(kernel, _args(length=0))
    finally:
        kernel.set_poison_outputs(False)
    assert out.shape == (2, 8, 0) and acc.shape == (2, 8, 0)
    assert last.shape == (2, 8, 4) and torch.equal(last, torch.zeros(2, 8, 4))


def test_bad_backward_buffers_are_named(kernel):
    a = _args()
    out, acc, _ = _fwd(kernel, a, last=False)
    dout = torch.ones_like(out)
    grads = _bwd(kernel, a, dout, acc)  # the good call works
    assert len(grads) == 8 and all(torch.isfinite(g).all() for g in grads)
    wide = torch.zeros(2, 8, 10)[..., ::2]  # right shape, strided
    with pytest.raises(RuntimeError, match=r'acc must be contiguous'):
        _bwd(kernel, a, dout, wide)
    with pytest.raises(RuntimeError, match=r'acc is on meta; every input '
                       r'must be on u\'s device cpu'):
        _bwd(kernel, a, dout, acc.to('meta'))
    with pytest.raises(RuntimeError, match=r'acc must be the \(batch, dim, '
                       r'length\) = \[2, 8, 5\] tensor the forward returned'):
        _bwd(kernel, a, dout, acc[:, :, :4].contiguous())
    with pytest.raises(RuntimeError, match=r'the output gradient must be'):
        _bwd(kernel, a, dout[:, :4], acc)
    with pytest.raises(RuntimeError, match=r'acc must be Float'):
        _bwd(kernel, a, dout, acc.double())
