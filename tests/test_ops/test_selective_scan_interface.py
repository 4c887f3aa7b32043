"""The whole Mamba selective-scan interface on every compiled kernel: B and
C each variable (b, N, L), grouped (b, G, N, L) or constant (E, N), with
and without D, z, delta_bias, softplus and the last state, forward and
every gradient against the float64 reference (which follows mamba_ssm's
reference: a constant B enters as ``einsum('bdl,dn,bdl->bdln', delta, B,
u)``, a constant C as ``einsum('bdn,dn->bd', h, C)``)."""
import pytest
import torch

from mmvim.ops import selective_scan_ref
from mmvim.ops.selective_scan_kernel import selective_scan_kernel

@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setenv('MMVIM_SCAN_POISON', '1')


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double()
    scale = b.norm().item()
    return (a - b).norm().item() / scale if scale > 0 else (a - b).norm().item()


# (B layout, C layout): 'var' (b, N, L), 'grp' (b, 2, N, L), 'const' (E, N)
LAYOUTS = [('var', 'var'), ('grp', 'grp'), ('const', 'var'),
           ('var', 'const'), ('const', 'const'), ('grp', 'const')]
# (D, z, delta_bias, softplus, last state)
OPTIONS = [(True, True, True, True, True), (False, False, False, False, True),
           (True, False, True, True, False), (False, True, False, True, True)]


def _bc(layout, batch, dim, state, length, g):
    shape = {'var': (batch, state, length), 'grp': (batch, 2, state, length),
             'const': (dim, state)}[layout]
    return torch.randn(*shape, generator=g)


@pytest.mark.parametrize('layout', LAYOUTS, ids=lambda v: '-'.join(v))
@pytest.mark.parametrize('options', OPTIONS, ids=lambda v: ''.join(
    'x' if o else '_' for o in v))
@pytest.mark.parametrize('length', [1, 37, 300])
def test_mamba_interface_grid(scan_kind, layout, options, length):
    name, device = scan_kind
    has_D, has_z, has_bias, softplus, last = options
    batch, dim, state = 2, 12, 5
    g = torch.Generator().manual_seed(length + len(layout[0]))
    delta = torch.rand(batch, dim, length, generator=g) * .5 + .05
    if softplus:
        delta = delta * 2 - 2
    x = dict(u=torch.randn(batch, dim, length, generator=g), delta=delta,
             A=-torch.rand(dim, state, generator=g) - .2,
             B=_bc(layout[0], batch, dim, state, length, g),
             C=_bc(layout[1], batch, dim, state, length, g),
             D=torch.randn(dim, generator=g) if has_D else None,
             z=torch.randn(batch, dim, length, generator=g) if has_z else None,
             delta_bias=torch.rand(dim, generator=g) * .5 if has_bias else None)
    present = {k: v for k, v in x.items() if v is not None}
    leaves = {k: v.to(device).requires_grad_(True) for k, v in present.items()}
    ref_leaves = {k: v.double().requires_grad_(True)
                  for k, v in present.items()}
    kw = dict(delta_softplus=softplus, return_last_state=last)
    out = selective_scan_kernel(**leaves, **kw, kind=name)
    ref = selective_scan_ref(**ref_leaves, **kw)
    y, y_ref = (out[0], ref[0]) if last else (out, ref)
    assert _rel(y, y_ref) < 1e-5
    if last:
        assert _rel(out[1], ref[1]) < 1e-5
    grad = torch.randn(y_ref.shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(y, list(leaves.values()), grad.float().to(
        device))
    ref_grads = torch.autograd.grad(y_ref, list(ref_leaves.values()), grad)
    for key, got, want in zip(leaves, grads, ref_grads):
        assert got.shape == want.shape and got.dtype == leaves[key].dtype
        assert _rel(got, want) < 1e-4, (key, _rel(got, want))
