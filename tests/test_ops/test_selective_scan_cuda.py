"""The CUDA kernel: built and imported everywhere nvcc is (so CUDA code
cannot rot unseen on CPU-only CI), checked numerically where a GPU is."""
import shutil

import pytest
import torch

from mmvim.ops import bi_selective_scan_ref, selective_scan_ref
from mmvim.ops.selective_scan_kernel import (bi_selective_scan_kernel,
                                             load_kernel,
                                             selective_scan_kernel)

needs_nvcc = pytest.mark.skipif(
    shutil.which('nvcc') is None and not torch.cuda.is_available(),
    reason='nvcc is not installed: the CUDA kernel cannot be compiled here')
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason='no CUDA GPU on this machine: CUDA numerics run on a GPU only')


@needs_nvcc
def test_cuda_extension_compiles_links_and_imports():
    module = load_kernel('cuda')
    assert module is not None, 'the CUDA kernel failed to build (see warning)'
    for name in ('scan_fwd', 'scan_bwd', 'bi_scan_fwd', 'bi_scan_bwd',
                 'set_poison_outputs'):
        assert hasattr(module, name)


@pytest.fixture
def poison_outputs(monkeypatch):
    monkeypatch.setenv('MMVIM_SCAN_POISON', '1')


def _inputs(batch, dim, state, length, groups=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    bc = (batch, state, length) if groups is None else (batch, groups, state,
                                                       length)
    return dict(
        u=torch.randn(batch, dim, length, generator=g).to(dtype),
        delta=(torch.randn(batch, dim, length, generator=g) * .5 - 1).to(dtype),
        A=-torch.rand(dim, state, generator=g) * 4 - .1,
        B=torch.randn(*bc, generator=g), C=torch.randn(*bc, generator=g),
        D=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, length, generator=g).to(dtype),
        delta_bias=torch.randn(dim, generator=g) * .5)


def _rel(a, b):
    diff = (a.double() - b.double()).norm().item()
    scale = b.double().norm().item()
    return diff / scale if scale > 0 else diff


# fp32 tight; fp16 / bf16 at their usual tolerances
TOLERANCE = {torch.float32: (2e-5, 1e-4), torch.float16: (2e-3, 5e-3),
             torch.bfloat16: (1e-2, 3e-2)}


@needs_gpu
@pytest.mark.usefixtures('poison_outputs')
@pytest.mark.parametrize('dtype', list(TOLERANCE))
@pytest.mark.parametrize('batch,dim,state,length,groups', [
    (2, 64, 16, 1, None), (2, 96, 16, 7, 2), (2, 64, 16, 197, None),
    (1, 64, 32, 2048, 4), (1, 40, 16, 2049, None), (1, 64, 64, 6085, None)])
def test_cuda_matches_reference(dtype, batch, dim, state, length, groups):
    x = _inputs(batch, dim, state, length, groups, seed=length, dtype=dtype)
    fwd_tol, grad_tol = TOLERANCE[dtype]
    for reverse in (False, True):
        leaves = {k: v.cuda().requires_grad_(True) for k, v in x.items()}
        ref_leaves = {k: v.double().requires_grad_(True) for k, v in x.items()}
        y, last = selective_scan_kernel(**leaves, delta_softplus=True,
                                        return_last_state=True,
                                        reverse=reverse)
        y_ref, last_ref = selective_scan_ref(**ref_leaves, delta_softplus=True,
                                             return_last_state=True,
                                             reverse=reverse)
        assert y.dtype == dtype and _rel(y.cpu(), y_ref) < fwd_tol
        assert _rel(last.cpu(), last_ref) < fwd_tol
        grad = torch.randn(y_ref.shape, dtype=torch.float64)
        grads = torch.autograd.grad(y, list(leaves.values()),
                                    grad.to(dtype).cuda())
        ref_grads = torch.autograd.grad(y_ref, list(ref_leaves.values()), grad)
        for name, g_, r in zip(leaves, grads, ref_grads):
            assert g_.dtype == leaves[name].dtype, name
            assert _rel(g_.cpu(), r) < grad_tol, (name, _rel(g_.cpu(), r))


@needs_gpu
@pytest.mark.usefixtures('poison_outputs')
@pytest.mark.parametrize('length', [1, 197, 4097])
def test_cuda_bi_scan_matches_reference(length):
    f = _inputs(2, 64, 16, length, seed=1)
    b = _inputs(2, 64, 16, length, seed=2)
    names = ['u', 'delta', 'A', 'B', 'C', 'D']
    args = [f[k] for k in names] + [b[k] for k in names]
    kw = dict(delta_bias=f['delta_bias'], delta_bias_b=b['delta_bias'],
              delta_softplus=True)
    ref_args = [a.double().requires_grad_(True) for a in args]
    ref_z = f['z'].double().requires_grad_(True)
    cuda_args = [a.cuda().requires_grad_(True) for a in args]
    cuda_z = f['z'].cuda().requires_grad_(True)
    ref = bi_selective_scan_ref(*ref_args, z=ref_z,
                                **{k: (v.double() if torch.is_tensor(v) else v)
                                   for k, v in kw.items()})
    out = bi_selective_scan_kernel(*cuda_args, z=cuda_z,
                                   **{k: (v.cuda() if torch.is_tensor(v) else v)
                                      for k, v in kw.items()})
    assert _rel(out.cpu(), ref) < 2e-5
    grad = torch.randn(ref.shape, dtype=torch.float64)
    grads = torch.autograd.grad(out, cuda_args + [cuda_z], grad.float().cuda())
    ref_grads = torch.autograd.grad(ref, ref_args + [ref_z], grad)
    for i, (g_, r) in enumerate(zip(grads, ref_grads)):
        assert _rel(g_.cpu(), r) < 1e-4, (i, _rel(g_.cpu(), r))
