"""HierVim: the paper's parameter counts, Swin's hierarchical idiom (any
size, any stage out, frozen stages, norm_eval), Vim's mixer scanning each
stage globally, bfloat16 autocast, and loading an mmvim classifier's
weights into a dense backbone."""
import pytest
import torch
import torch.nn as nn
from mmengine.registry import DefaultScope

from mmvim.models import BiMambaMixer, HierVim
from saved_for_backward import compare_checkpointed_twin

# the paper's Table (appendix C): params with a 1000-class linear head
PAPER_PARAMS = {'tiny': 30e6, 'small': 50e6, 'base': 89e6}
SMALL = dict(embed_dims=16, depths=(1, 1, 2, 1))


def params_with_head(backbone, num_classes=1000):
    head = backbone.num_features[-1] * num_classes + num_classes
    return sum(p.numel() for p in backbone.parameters()) + head


@pytest.mark.parametrize('arch', sorted(PAPER_PARAMS))
def test_parameter_counts_match_the_paper(arch):
    count = params_with_head(HierVim(arch))
    assert abs(count / PAPER_PARAMS[arch] - 1) < 0.03, count


def test_arch_zoo_aliases_and_errors():
    zoo = HierVim.arch_zoo
    assert zoo['t'] == zoo['tiny'] == dict(embed_dims=96, depths=(2, 2, 5, 2))
    assert zoo['s'] == zoo['small'] and zoo['b'] == zoo['base']
    assert HierVim('T', out_indices=(0, )).depths == (2, 2, 5, 2)
    with pytest.raises(ValueError, match="unknown arch 'huge'"):
        HierVim('huge')
    with pytest.raises(ValueError, match='depths'):
        HierVim(dict(embed_dims=16))
    with pytest.raises(ValueError, match='out index 4 is out of range'):
        HierVim(SMALL, out_indices=(4, ))


def test_blocks_are_swin_blocks_with_vims_mixer():
    model = HierVim(SMALL, drop_path_rate=0.3)
    blocks = [b for stage in model.stages for b in stage.blocks]
    assert all(isinstance(b.mixer, BiMambaMixer) for b in blocks)
    assert all(isinstance(b.norm1, nn.LayerNorm) for b in blocks)
    # FFN hidden width C * 3.5, the ratio derived from the paper's counts
    assert blocks[0].ffn.layers[0][0].out_features == 56
    rates = [b.drop_path.drop_prob for b in blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3)
    assert rates == sorted(rates)
    # no position embedding: only the layers' own parameters
    assert not [n for n, _ in model.named_parameters() if 'pos' in n]


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_registered_for_every_scope(scope):
    registry = __import__(f'{scope}.registry', fromlist=['MODELS'])
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.MODELS.build(dict(type='HierVim', arch=SMALL))
    assert isinstance(model, HierVim)


def test_any_size_any_stage():
    model = HierVim(SMALL, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 67, 45))  # odd sizes pad as Swin
    assert [tuple(o.shape) for o in outs] == [
        (2, 16, 17, 12), (2, 32, 9, 6), (2, 64, 5, 3), (2, 128, 3, 2)]
    last = HierVim(SMALL, out_indices=-1).eval()
    with torch.no_grad():
        assert last(torch.randn(1, 3, 32, 32))[0].shape == (1, 128, 1, 1)


def test_each_stage_mixes_globally():
    """One block at stride 4 already links the two far corners of the map,
    both ways (forward and backward scan; a windowed block would not).
    float64 gradients: the SSM's decay makes the far influence tiny."""
    model = HierVim(dict(embed_dims=16, depths=(1, 1, 1, 1)),
                    out_indices=(0, )).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    out = model(x)[0]  # (1, 16, 16, 16)
    # a random read-out: the channel sum of a LayerNorm output is constant
    probe = torch.randn(16, dtype=torch.float64)
    to_last = torch.autograd.grad((out[0, :, -1, -1] * probe).sum(), x,
                                  retain_graph=True)[0]
    to_first = torch.autograd.grad((out[0, :, 0, 0] * probe).sum(), x)[0]
    assert to_last[..., :4, :4].abs().sum() > 0  # top-left -> bottom-right
    assert to_first[..., -4:, -4:].abs().sum() > 0  # and back
    # a token's own patch still dominates
    assert to_last[..., -4:, -4:].abs().sum() > \
        to_last[..., :4, :4].abs().sum()


def test_bfloat16_autocast_and_backward():
    torch.manual_seed(0)
    model = HierVim(SMALL, out_indices=(0, 3))
    x = torch.randn(2, 3, 64, 64)
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    for r, lo in zip(ref, low):
        assert torch.isfinite(lo).all()
        err = (lo.float() - r).norm() / r.norm()
        assert err < 0.05, err


def test_frozen_stages_and_norm_eval():
    model = HierVim(SMALL, out_indices=(0, 1, 2, 3), frozen_stages=1,
                    norm_eval=True)
    model.bn_probe = nn.BatchNorm2d(4)  # what norm_eval keeps in eval mode
    model.train()
    frozen = [model.patch_embed, model.stages[0], model.stages[1],
              model.norm0, model.norm1]
    assert all(not m.training for m in frozen)
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert model.stages[2].training and model.norm2.weight.requires_grad
    assert not model.bn_probe.training
    # and in a training step: the frozen part and the BN statistics stay,
    # the rest learns
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = model.bn_probe.running_mean.clone()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1)
    outs = model(torch.randn(2, 3, 64, 64))
    probe = model.bn_probe(torch.randn(2, 4, 3, 3) + 5)
    (sum(o.square().mean() for o in outs) + probe.mean()).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        frozen_part = name.startswith(('patch_embed.', 'stages.0.',
                                       'stages.1.', 'norm0.', 'norm1.'))
        if frozen_part:
            assert torch.equal(p, before[name]), name
    assert not torch.equal(model.stages[2].blocks[0].mixer.in_proj.weight,
                           before['stages.2.blocks.0.mixer.in_proj.weight'])
    assert torch.equal(model.bn_probe.running_mean, stats)


def test_pretrained_classifier_loads_into_dense_backbone(tmp_path, capsys):
    from mmengine.registry import DefaultScope
    from mmpretrain.models import ImageClassifier
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        classifier = ImageClassifier(
            backbone=dict(type='HierVim', arch=SMALL),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=5, in_channels=128))
    path = str(tmp_path / 'hier_vim_cls.pth')
    torch.save({'state_dict': classifier.state_dict(), 'meta': {}}, path)

    dense = HierVim(SMALL, out_indices=(0, 1, 2, 3),
                    init_cfg=dict(type='Pretrained', checkpoint=path))
    init_norm0 = dense.norm0.weight.clone()
    dense.init_weights()
    source = classifier.backbone.state_dict()
    own = dense.state_dict()
    for key, value in source.items():
        assert torch.equal(own[key], value), key
    assert torch.equal(dense.norm0.weight, init_norm0)
    x = torch.randn(1, 3, 64, 64)
    classifier.eval(), dense.eval()
    with torch.no_grad():
        assert torch.allclose(dense(x)[3], classifier.backbone(x)[0])

    other = HierVim(dict(embed_dims=24, depths=(1, 1, 2, 1)),
                    init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ValueError, match='does not fit this Hier-Vim'):
        other.init_weights()


@pytest.mark.parametrize('config', [
    'hier-vim-tiny_8xb128_in1k.py',
    'upernet_hier-vim-tiny_8xb2-160k_ade20k-512x512.py',
    'mask-rcnn_hier-vim-tiny_fpn_1x_coco.py'])
def test_configs_exempt_what_the_vim_configs_exempt_from_weight_decay(
        config):
    """Swin's optimizers with the Vim configs' no-decay set: 1-D parameters
    (norms, biases, D, D_b); A_log / A_b_log decayed, as in the reference
    run."""
    import os.path as osp

    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from mmvim.engine.optimizers.layer_decay_optim_wrapper_constructor \
        import is_no_weight_decay
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    cfg = Config.fromfile(osp.join(root, 'configs', 'hier_vim', config))
    model = nn.Module()
    model.backbone = HierVim(SMALL)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    decay = {id(p): g['weight_decay'] for g in wrapper.optimizer.param_groups
             for p in g['params']}
    names = dict(model.named_parameters())
    assert len(decay) == len(names)
    for name, param in names.items():
        expected = 0. if is_no_weight_decay(name, param) else base_wd
        assert decay[id(param)] == expected, name
    mixer = 'backbone.stages.0.blocks.0.mixer.'
    assert decay[id(names[mixer + 'D_b'])] == 0
    assert decay[id(names[mixer + 'A_b_log'])] == base_wd


def test_activation_checkpointing():
    """with_cp: the same outputs and gradients (drop path included: the RNG
    state is replayed), fewer bytes kept for backward (saved-tensor hooks,
    parameters and the image left out), and reachable from a config."""
    kw = dict(arch=SMALL, out_indices=(0, 3), drop_path_rate=0.3)
    plain = HierVim(**kw).train()
    ckpt = HierVim(with_cp=True, **kw).train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    saved, saved_cp = compare_checkpointed_twin(plain, ckpt, x)
    print(f'Hier-Vim saved for backward {saved} -> {saved_cp} bytes')
    assert saved_cp < 0.5 * saved, (saved_cp, saved)
    from mmvim.registry import MODELS
    built = MODELS.build(dict(type='HierVim', arch=SMALL, with_cp=True))
    assert all(stage.with_cp for stage in built.stages)
