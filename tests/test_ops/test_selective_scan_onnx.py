"""The exportable scan (one ``scan`` over the tokens) computes what the
reference computes: every argument of the Mamba interface, both directions,
the Vim mixer's three variants."""
import pytest
import torch

from mmvim.models.layers import BiMambaMixer
from mmvim.ops import (bi_selective_scan_onnx, bi_selective_scan_ref,
                       selective_scan_onnx, selective_scan_ref)


def _inputs(batch=2, dim=6, state=4, length=9, bc='shared', seed=0,
            dtype=torch.float32):
    """Random scan inputs; bc: 'shared' (b, N, L), 'grouped' (b, 3, N, L)
    or 'constant' (E, N) B and C."""
    g = torch.Generator().manual_seed(seed)
    bc_shape = {'shared': (batch, state, length),
                'grouped': (batch, 3, state, length),
                'constant': (dim, state)}[bc]

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return dict(u=rand(batch, dim, length), delta=rand(batch, dim, length) *
                .5 - .5, A=-torch.rand(dim, state, generator=g,
                                       dtype=dtype) * 4 - .1,
                B=rand(*bc_shape), C=rand(*bc_shape), D=rand(dim),
                z=rand(batch, dim, length), delta_bias=rand(dim) * .5)


def _rel(got, want):
    return ((got.double() - want.double()).norm() /
            want.double().norm()).item()


@pytest.mark.parametrize('length', [1, 2, 9, 40])
@pytest.mark.parametrize('bc', ['shared', 'grouped', 'constant'])
@pytest.mark.parametrize('reverse', [False, True])
def test_matches_reference(length, bc, reverse):
    x = _inputs(length=length, bc=bc)
    y, last = selective_scan_onnx(**x, delta_softplus=True,
                                  return_last_state=True, reverse=reverse)
    want, want_last = selective_scan_ref(
        **{k: v.double() for k, v in x.items()}, delta_softplus=True,
        return_last_state=True, reverse=reverse)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    assert y.shape == x['u'].shape and last.shape == (2, 6, 4)
    assert _rel(y, want) < 1e-6 and _rel(last, want_last) < 1e-6


def test_optional_terms_and_float64():
    x = _inputs(dtype=torch.float64)
    for drop in ('D', 'z', 'delta_bias'):
        kept = {k: v for k, v in x.items() if k != drop}
        torch.testing.assert_close(selective_scan_onnx(**kept),
                                   selective_scan_ref(**kept), rtol=1e-12,
                                   atol=1e-12)


def test_half_inputs_return_half():
    x = _inputs()
    x['u'], x['z'] = x['u'].half(), x['z'].half()
    y = selective_scan_onnx(**x, delta_softplus=True)
    want = selective_scan_ref(**x, delta_softplus=True)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_groups_must_divide_channels():
    x = _inputs(bc='grouped', dim=7)
    with pytest.raises(ValueError, match='3 groups, which does not divide'):
        selective_scan_onnx(**x)


@pytest.mark.parametrize('divide_out', [True, False])
def test_bidirectional_matches_reference(divide_out):
    f, b = _inputs(bc='grouped', seed=1), _inputs(bc='grouped', seed=2)
    names = ('u', 'delta', 'A', 'B', 'C', 'D')
    args = [f[k] for k in names] + [b[k] for k in names]
    kwargs = dict(z=f['z'], delta_bias=f['delta_bias'],
                  delta_bias_b=b['delta_bias'], delta_softplus=True,
                  divide_out=divide_out)
    got = bi_selective_scan_onnx(*args, **kwargs)
    want = bi_selective_scan_ref(*[a.double() for a in args],
                                 **{k: v.double() if torch.is_tensor(v) else v
                                    for k, v in kwargs.items()})
    assert _rel(got, want) < 1e-6


@pytest.mark.parametrize('bidirectional', ['ssm_conv', 'ssm', 'none'])
def test_mixer_onnx_scan_matches_reference_path(bidirectional, monkeypatch):
    monkeypatch.setenv('MMVIM_SCAN_IMPL', 'ref')  # the other path: the spec
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4, bidirectional=bidirectional).eval()
    hidden = torch.randn(2, 11, 16)
    with torch.no_grad():
        want = mixer(hidden)
        mixer.onnx_scan = True
        got = mixer(hidden)
    assert _rel(got, want) < 1e-6
