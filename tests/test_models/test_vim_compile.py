"""Vim and Hier-Vim under ``torch.compile(fullgraph=True)`` and
``torch.export``: the scan kernels are registered operators with fake
implementations and autograd formulas (``mmvim.ops.library``), so the
whole backbone is one graph, forward and backward.

Compiling costs tens of seconds on two cores, so the models are small
(Vim: 2 layers; Hier-Vim: one block per stage): Vim with the default
backend (Inductor), Hier-Vim with ``aot_eager`` (Dynamo and AOTAutograd,
which is where a graph break or an untraceable op shows, without
Inductor's code generation). The export checks build the real Vim-Ti
classifier and the UperNet + Vim-Ti segmentor from their configs.
"""
import os.path as osp

import pytest
import torch

from mmvim.models.backbones import HierVim, Vim

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _train_step(model, x):
    """(outputs, gradients of every parameter) of one step with a squared
    loss over every output."""
    model.zero_grad()
    outs = model(x)
    sum(o.float().pow(2).mean() for o in outs).backward()
    return ([o.detach() for o in outs],
            [p.grad.clone() for p in model.parameters()])


def _max_rel(got, want):
    return max(((a - b).norm() / b.norm().clamp_min(1e-30)).item()
               for a, b in zip(got, want))


@pytest.mark.parametrize('name,backend', [('vim', 'inductor'),
                                          ('hier-vim', 'aot_eager')])
def test_backbone_compiles_into_one_graph(name, backend):
    """fullgraph=True fails on any graph break; the compiled training step
    gives eager's outputs and gradients within float32 rounding."""
    torch.manual_seed(0)
    if name == 'vim':
        model = Vim(arch=dict(embed_dims=48, depth=2), img_size=32,
                    patch_size=8, out_indices=(0, 1), drop_path_rate=0.)
    else:  # no drop path: its random draws differ once compiled
        model = HierVim(dict(embed_dims=16, depths=(1, 1, 1, 1)),
                        out_indices=(0, 3), drop_path_rate=0.)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    outs, grads = _train_step(model, x)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    c_outs, c_grads = _train_step(compiled, x)
    assert _max_rel(c_outs, outs) < 1e-5
    # (a gradient lost by the compiled backward, all zeros, is off by 1)
    assert _max_rel(c_grads, grads) < 1e-4


def _build(config, scope):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(osp.join(ROOT, config))
    init_default_scope(scope)
    return MODELS.build(cfg.model).eval()


class _Tensors(torch.nn.Module):
    """An OpenMMLab model's plain tensor forward (mode='tensor')."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return self.model(inputs, mode='tensor')


@pytest.mark.parametrize('config,scope,size', [
    ('configs/vim/vim-tiny-p16_8xb128_in1k.py', 'mmpretrain', 224),
    ('configs/vim/upernet_vim-tiny_1xb4-300it_synthetic-ade20k-128x128.py',
     'mmseg', 128),
])
def test_export_with_a_dynamic_batch(config, scope, size):
    """torch.export of the Vim-Ti classifier and the UperNet + Vim-Ti
    segmentor: the scan stays one mmvim op per layer, and the exported
    program runs another batch size with eager's result."""
    model = _Tensors(_build(config, scope))
    batch = torch.export.Dim('batch', min=1, max=64)
    program = torch.export.export(
        model, (torch.randn(2, 3, size, size), ),
        dynamic_shapes={'inputs': {
            0: batch
        }})
    targets = [str(n.target) for n in program.graph.nodes
               if n.op == 'call_function']
    depth = model.model.backbone.depth
    assert targets.count('mmvim.bimamba_inner.default') == depth
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        got, want = program.module()(x), model(x)
    assert got.shape == want.shape and got.shape[0] == 3
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
