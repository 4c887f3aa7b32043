import pytest
import torch
import torch.nn.functional as F

from mmvim.ops import (bi_selective_scan, bi_selective_scan_ref,
                       causal_conv1d, select_scan_impl, selective_scan,
                       selective_scan_ref)


def _inputs(batch=2, dim=6, state=4, length=9, groups=None, seed=0,
            dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, state, length) if groups is None else (batch, groups,
                                                              state, length)
    return dict(
        u=torch.randn(batch, dim, length, generator=g, dtype=dtype),
        delta=torch.randn(batch, dim, length, generator=g, dtype=dtype) * .5,
        A=-torch.rand(dim, state, generator=g, dtype=dtype) - .1,
        B=torch.randn(*bc_shape, generator=g, dtype=dtype),
        C=torch.randn(*bc_shape, generator=g, dtype=dtype),
        D=torch.randn(dim, generator=g, dtype=dtype),
        z=torch.randn(batch, dim, length, generator=g, dtype=dtype),
        delta_bias=torch.randn(dim, generator=g, dtype=dtype) * .1)


def _per_channel(X, b, e, dim, length):
    """(N, L) of B or C for batch b and channel e: (b, N, L); grouped
    (b, G, N, L), channel e in group e // (E / G); constant (E, N), the
    same for every token."""
    if X.dim() == 2:
        return X[e, :, None].expand(-1, length)
    if X.dim() == 3:
        return X[b]
    return X[b, e // (dim // X.shape[1])]


def _naive_scan(u, delta, A, B, C, D, z, delta_bias):
    """Element-by-element loop straight from the recurrence (B and C per
    batch, grouped or constant)."""
    batch, dim, length = u.shape
    y = torch.zeros_like(u)
    for b in range(batch):
        for e in range(dim):
            Bb = _per_channel(B, b, e, dim, length)
            Cb = _per_channel(C, b, e, dim, length)
            h = torch.zeros(A.shape[1], dtype=u.dtype)
            for t in range(length):
                d = F.softplus(delta[b, e, t] + delta_bias[e])
                h = torch.exp(d * A[e]) * h + d * Bb[:, t] * u[b, e, t]
                y[b, e, t] = (h * Cb[:, t]).sum() + D[e] * u[b, e, t]
    return y * F.silu(z)


@pytest.mark.parametrize('groups', [None, 1, 3, 'const-B', 'const-C'])
def test_scan_matches_recurrence(groups):
    if isinstance(groups, str):  # a constant (E, N) B or C (Mamba's S4D)
        x = _inputs()
        name = groups[-1]
        x[name] = torch.randn(6, 4, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(5))
    else:
        x = _inputs(groups=groups)
    y = selective_scan_ref(**x, delta_softplus=True)
    torch.testing.assert_close(y, _naive_scan(**x), rtol=1e-10, atol=1e-10)


def test_optional_terms_and_last_state():
    x = _inputs(length=5)
    y, h = selective_scan_ref(x['u'], x['delta'], x['A'], x['B'], x['C'],
                              return_last_state=True)
    # without D, z, bias, softplus: recompute the last state by hand
    h_ref = torch.zeros(2, 6, 4, dtype=torch.float64)
    for t in range(5):
        d = x['delta'][:, :, t, None]
        h_ref = torch.exp(d * x['A']) * h_ref + d * x['B'][:, None, :, t] \
            * x['u'][:, :, t, None]
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(y[..., -1], (h_ref * x['C'][:, None, :, -1]).sum(-1))


def test_reverse_is_flip_composition():
    x = _inputs(groups=2)
    flipped = {k: (v.flip(-1) if k in ('u', 'delta', 'B', 'C', 'z') else v)
               for k, v in x.items()}
    expected = selective_scan_ref(**flipped, delta_softplus=True).flip(-1)
    got = selective_scan_ref(**x, delta_softplus=True, reverse=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_bi_scan_is_flip_composition_with_grads():
    fwd, bwd = _inputs(seed=1), _inputs(seed=2)
    for t in list(fwd.values()) + list(bwd.values()):
        t.requires_grad_(True)
    z = fwd['z']

    def flip_composition():
        y_f = selective_scan_ref(fwd['u'], fwd['delta'], fwd['A'], fwd['B'],
                                 fwd['C'], fwd['D'], z, fwd['delta_bias'],
                                 True)
        y_b = selective_scan_ref(bwd['u'].flip(-1), bwd['delta'].flip(-1),
                                 bwd['A'], bwd['B'].flip(-1),
                                 bwd['C'].flip(-1), bwd['D'], z.flip(-1),
                                 bwd['delta_bias'], True).flip(-1)
        return (y_f + y_b) / 2

    def fused():
        return bi_selective_scan_ref(
            fwd['u'], fwd['delta'], fwd['A'], fwd['B'], fwd['C'], fwd['D'],
            bwd['u'], bwd['delta'], bwd['A'], bwd['B'], bwd['C'], bwd['D'],
            z=z, delta_bias=fwd['delta_bias'], delta_bias_b=bwd['delta_bias'],
            delta_softplus=True)

    leaves = [v for v in fwd.values()] + [v for k, v in bwd.items() if k != 'z']
    grad_out = torch.randn(2, 6, 9, dtype=torch.float64)
    expected = flip_composition()
    expected_grads = torch.autograd.grad(expected, leaves, grad_out)
    got = fused()
    got_grads = torch.autograd.grad(got, leaves, grad_out)
    torch.testing.assert_close(got, expected)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_dtype_and_empty_sequence():
    x = _inputs(dtype=torch.float32)
    assert selective_scan_ref(**x).dtype == torch.float32
    x16 = {k: (v.half() if k in ('u', 'delta', 'z') else v) for k, v in x.items()}
    y16 = selective_scan_ref(**x16, delta_softplus=True)
    assert y16.dtype == torch.float16
    empty = _inputs(length=0)
    assert selective_scan_ref(**empty).shape == (2, 6, 0)


def test_grouped_bc_must_divide_channels():
    x = _inputs(groups=4)  # 6 channels, 4 groups
    with pytest.raises(ValueError, match='groups'):
        selective_scan_ref(**x)


@pytest.mark.parametrize('width', [2, 4])
def test_anticausal_conv_is_flip_composition(width):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 11, generator=g, dtype=torch.float64)
    w = torch.randn(5, 1, width, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    causal = causal_conv1d(x, w, b, 'silu')
    # causal: out[t] only depends on x[.. t]
    manual = sum(w[:, 0, k, None] * F.pad(x, (width - 1, 0))[..., k:k + 11]
                 for k in range(width)) + b[:, None]
    torch.testing.assert_close(causal, F.silu(manual))
    anti = causal_conv1d(x, w, b, 'silu', reverse=True)
    torch.testing.assert_close(
        anti, causal_conv1d(x.flip(-1), w, b, 'silu').flip(-1))
    with pytest.raises(ValueError, match='activation'):
        causal_conv1d(x, w, b, 'relu6')


def test_dispatch(monkeypatch):
    x = _inputs(dtype=torch.float32)
    monkeypatch.setenv('MMVIM_SCAN_IMPL', 'ref')
    assert select_scan_impl('cpu') == 'ref'
    torch.testing.assert_close(selective_scan(**x), selective_scan_ref(**x))
    args = [x['u'], x['delta'], x['A'], x['B'], x['C'], x['D']] * 2
    torch.testing.assert_close(bi_selective_scan(*args),
                               bi_selective_scan_ref(*args))
    monkeypatch.setenv('MMVIM_SCAN_IMPL', 'gpu')
    with pytest.raises(ValueError, match='auto, ref, cpu, cuda or simt'):
        select_scan_impl('cpu')
