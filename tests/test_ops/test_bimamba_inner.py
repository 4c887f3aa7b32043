"""The fused Vim mixer (``mmvim.ops.bimamba_inner``: both directions' conv,
scan and gate over the compiled kernels, token-major) against the mixer's
readable path (``BiMambaMixer.forward_reference``), output and every
gradient, on the CPU kernel and on the CUDA kernel (under the SIMT
emulation without a GPU, on the device with one), and that the kernel reads
the linear layers' outputs where they are. (What a layer keeps for
backward: tests/test_tools/test_benchmark_scan.py.)"""
import importlib

import pytest
import torch

from mmvim.models.layers import BiMambaMixer
from mmvim.ops import bimamba_inner

def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _mixer(dims, device, conv_bias=True, seed=0):
    torch.manual_seed(seed)
    mixer = BiMambaMixer(dims, d_state=16, conv_bias=conv_bias).to(device)
    with torch.no_grad():  # away from the init so every gradient is alive
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return mixer


def _both_paths(mixer, hidden, kind, autocast_dtype=None):
    """(fused output, reference output, fused grads, reference grads) of
    out_proj(inner(in_proj(hidden))) with respect to hidden and every
    parameter."""
    leaves = [hidden] + list(mixer.parameters())
    results = []
    for fused in (True, False):
        with torch.autocast(hidden.device.type, dtype=autocast_dtype
                            or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            xz = mixer.in_proj(hidden)
            inner = bimamba_inner(
                xz, mixer._direction_params(''),
                mixer._direction_params('_b'), mixer.dt_rank,
                mixer.d_state, mixer.divide_out, kind=kind) \
                if fused else mixer.forward_reference(xz)
            out = mixer.out_proj(inner)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(
            3)).to(out)
        grads = torch.autograd.grad(out, leaves, grad, allow_unused=True)
        results.append((out, grads))
    return results


@pytest.mark.parametrize('length', [1, 7, 197, 300])
def test_fused_mixer_matches_the_readable_path(scan_kind, length):
    name, device = scan_kind
    mixer = _mixer(24, device, conv_bias=length != 7)
    hidden = torch.randn(2, length, 24, device=device, requires_grad=True)
    (out, grads), (ref, ref_grads) = _both_paths(mixer, hidden, name)
    assert _rel(out, ref) < 1e-5
    names = ['hidden'] + [n for n, _ in mixer.named_parameters()]
    for n, g, r in zip(names, grads, ref_grads):
        assert g is not None and r is not None, n
        assert _rel(g, r) < 5e-5, (n, _rel(g, r))


def test_fused_mixer_under_bfloat16_autocast(scan_kind):
    """Autocast as in training: the kernels see bfloat16 activations (the
    CUDA kernel keeps them, the CPU kernel widens them) and float32 weights;
    both paths round the same matmuls."""
    name, device = scan_kind
    mixer = _mixer(32, device, seed=1)
    hidden = torch.randn(2, 65, 32, device=device, requires_grad=True)
    (out, grads), (ref, ref_grads) = _both_paths(
        mixer, hidden, name, autocast_dtype=torch.bfloat16)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert _rel(out, ref) < 2e-2
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype and _rel(g, r) < 5e-2


def test_kernel_reads_the_linear_outputs_in_place(scan_kind, monkeypatch):
    """z reaches the kernel as a half of in_proj's output, B and C as
    slices of x_proj's: no transposes or copies on the Python side (on the
    CUDA kernel; the CPU kernel computes in float32 and gets the same views
    for float32 data). The CUDA kernel gets x, the other half, and the conv
    to compute u itself; the CPU kernel gets u, token-major, and no conv."""
    inner_module = importlib.import_module('mmvim.ops.bimamba_inner')
    name, device = scan_kind
    mixer = _mixer(16, device)
    xz = mixer.in_proj(torch.randn(1, 9, 16, device=device))
    seen = {}
    real = inner_module.kernel_ops

    class Spy:
        """The kernel's ops, recording what scan_fwd receives."""

        def __init__(self, ops):
            self.ops = ops

        def __getattr__(self, name):
            return getattr(self.ops, name)

        def scan_fwd(self, *args):
            seen.update(dirs=(args[:9], args[9:18]), z=args[18])
            return self.ops.scan_fwd(*args)

    monkeypatch.setattr(inner_module, 'kernel_ops',
                        lambda kind: Spy(real(kind)))
    with torch.no_grad():  # the Python composition (the CPU's is in C++)
        inner_module._compose(
            xz, [*mixer._direction_params(''),
                 *mixer._direction_params('_b')], mixer.dt_rank,
            mixer.d_state, 0.5, name)
    storage = xz.untyped_storage().data_ptr()
    assert seen['z'].untyped_storage().data_ptr() == storage
    for direction in seen['dirs']:
        x, delta, B, C = direction[0], direction[3], direction[5], \
            direction[6]
        if name in inner_module.FUSED_CONV_KINDS:
            assert x.untyped_storage().data_ptr() == storage
            assert x.stride() == (9 * 64, 64, 1)  # token-major rows of xz
            assert direction[1].shape == (32, 4)  # the conv's weight
        else:
            assert x.is_contiguous() and x.shape == (1, 9, 32)  # u
            assert direction[1] is None and direction[2] is None
        assert delta.is_contiguous() and delta.shape == (1, 9, 32)
        # B and C: (b, L, 1, N) slices of one (b, L, R + 2N) x_proj output
        assert B.untyped_storage().data_ptr() == \
            C.untyped_storage().data_ptr()
        assert B.shape == (1, 9, 1, 16) and B.stride()[1] == mixer.dt_rank + 32


@pytest.mark.parametrize('autocast', [False, True])
def test_cpu_mixer_forward_is_the_python_composition(autocast):
    """The CPU extension's one-call forward (mixer_forward) runs the same
    ops as the Python composition (_compose): equal to the last bit, in
    float32 and under bfloat16 autocast."""
    inner_module = importlib.import_module('mmvim.ops.bimamba_inner')
    mixer = _mixer(24, 'cpu', conv_bias=False)
    params = [*mixer._direction_params(''), *mixer._direction_params('_b')]
    params[1] = params[8] = torch.zeros(48)  # as bimamba_inner fills them
    with torch.no_grad(), torch.autocast('cpu', torch.bfloat16,
                                         enabled=autocast):
        xz = mixer.in_proj(torch.randn(2, 33, 24))
        out, states = inner_module._forward(xz, params, mixer.dt_rank,
                                            mixer.d_state, 0.5, 'cpu')
        want, want_states = inner_module._compose(
            xz, params, mixer.dt_rank, mixer.d_state, 0.5, 'cpu')
    assert out.dtype == xz.dtype == (torch.bfloat16 if autocast
                                     else torch.float32)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert states.numel() == want_states.numel() == 0


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('width,bias', [(1, True), (3, False), (4, True)])
def test_fused_conv_silu_matches_the_formula(scan_kind, reverse, width, bias):
    """The kernel's depthwise conv + SiLU (the u that feeds x_proj) on a
    strided view of in_proj's output, against the formula in float64:
    out[t] = silu(b + sum_k w[k] x[t - (W-1) + k]), mirrored in tokens when
    reverse; its gradients are those of that formula."""
    from mmvim.ops.causal_conv1d import causal_conv1d_silu_tokens
    name, device = scan_kind
    g = torch.Generator().manual_seed(width)
    xz = torch.randn(2, 19, 2 * 12, generator=g).to(device)
    x = xz[..., :12].requires_grad_()  # (b, L, E) view, row stride 2E
    w = torch.randn(12, 1, width, generator=g).to(device).requires_grad_()
    b = torch.randn(12, generator=g).to(device).requires_grad_() \
        if bias else None
    xd = x.detach().double().cpu()
    xs = xd.flip(1) if reverse else xd
    padded = torch.nn.functional.pad(xs, (0, 0, width - 1, 0))
    pre = sum(w.detach().double().cpu()[:, 0, k] * padded[:, k:k + 19]
              for k in range(width))
    if bias:
        pre = pre + b.detach().double().cpu()
    want = torch.nn.functional.silu(pre)
    want = want.flip(1) if reverse else want
    out = causal_conv1d_silu_tokens(x, w, b, reverse, name)
    assert out.shape == (2, 19, 12) and out.dtype == x.dtype
    assert _rel(out, want) < 1e-6
    ref = causal_conv1d_silu_tokens(x, w, b, reverse, None)
    grad = torch.randn(out.shape, generator=g).to(device)
    leaves = [t for t in (x, w, b) if t is not None]
    for got, exp in zip(torch.autograd.grad(out, leaves, grad),
                        torch.autograd.grad(ref, leaves, grad)):
        assert _rel(got, exp) < 1e-6
    if name == 'simt':  # the CUDA kernel keeps bfloat16 data in bfloat16
        half = causal_conv1d_silu_tokens(x.detach().bfloat16(), w, b,
                                         reverse, name)
        assert half.dtype == torch.bfloat16 and _rel(half, want) < 1e-2
