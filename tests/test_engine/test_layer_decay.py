import pytest
import torch.nn as nn
from mmengine.optim import build_optim_wrapper

from mmvim.models import HierVim, Vim

RATE = 0.92


class Classifier(nn.Module):

    def __init__(self):
        super().__init__()
        self.backbone = Vim(dict(embed_dims=16, depth=24), img_size=32)
        self.head = nn.Linear(16, 10)


def _groups_by_param(model, paramwise_cfg):
    wrapper = build_optim_wrapper(model, dict(
        type='OptimWrapper', constructor='VimLayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        paramwise_cfg=paramwise_cfg))
    return {id(p): g for g in wrapper.optimizer.param_groups
            for p in g['params']}


def test_lr_per_layer():
    model = Classifier()
    groups = _groups_by_param(model, dict(layer_decay_rate=RATE))
    bb = model.backbone

    def lr(param):
        return groups[id(param)]['lr']

    assert lr(bb.patch_embed.proj.weight) == pytest.approx(1e-3 * RATE**25)
    assert lr(bb.pos_embed) == pytest.approx(1e-3 * RATE**25)
    assert lr(bb.layers[0].mixer.in_proj.weight) == pytest.approx(1e-3 * RATE**24)
    assert lr(bb.layers[23].mixer.in_proj.weight) == pytest.approx(1e-3 * RATE)
    assert lr(bb.norm_f.weight) == pytest.approx(1e-3)
    assert lr(model.head.weight) == pytest.approx(1e-3)
    # the reference code's rule looked for 'blocks.N' and decayed no layer
    assert lr(bb.layers[0].mixer.in_proj.weight) < lr(bb.layers[23].mixer.in_proj.weight)


@pytest.mark.parametrize('rule', [None, 'reference', 'mamba'])
def test_no_weight_decay_set(rule):
    """The reference run's rule (timm: 1-D, biases, pos_embed, cls_token;
    the default) decays A_log / A_b_log; Mamba's rule exempts them too."""
    model = Classifier()
    cfg = dict(layer_decay_rate=RATE)
    if rule:
        cfg['no_decay_rule'] = rule
    groups = _groups_by_param(model, cfg)
    bb, mixer = model.backbone, model.backbone.layers[5].mixer
    no_decay = [bb.pos_embed, bb.cls_token, mixer.D, mixer.D_b,
                bb.layers[5].norm.weight, bb.norm_f.weight,
                mixer.conv1d.bias, mixer.dt_proj_b.bias, model.head.bias,
                bb.patch_embed.proj.bias]
    decay = [mixer.in_proj.weight, mixer.x_proj_b.weight, mixer.conv1d.weight,
             bb.patch_embed.proj.weight, model.head.weight]
    a_logs = [mixer.A_log, mixer.A_b_log]
    (no_decay if rule == 'mamba' else decay).extend(a_logs)
    assert all(groups[id(p)]['weight_decay'] == 0 for p in no_decay)
    assert all(groups[id(p)]['weight_decay'] == 0.05 for p in decay)
    assert len(groups) == sum(1 for _ in model.parameters())
    with pytest.raises(ValueError, match="no_decay_rule 'timm'"):
        _groups_by_param(model, dict(layer_decay_rate=RATE,
                                     no_decay_rule='timm'))


def test_frozen_parameters_are_left_out_and_bare_backbone():
    model = Classifier()
    model.backbone.pos_embed.requires_grad = False
    groups = _groups_by_param(model, dict(layer_decay_rate=RATE))
    assert id(model.backbone.pos_embed) not in groups
    bare = Vim(dict(embed_dims=16, depth=2), img_size=32)
    groups = _groups_by_param(bare, dict(layer_decay_rate=0.5))
    assert groups[id(bare.layers[1].mixer.D)]['lr'] == pytest.approx(1e-3 * 0.5)


def test_layer_depths_come_from_the_backbone():
    """mmpretrain's idiom: get_layer_depth(name, prefix) -> (depth, n)."""
    vim = Vim(dict(embed_dims=16, depth=24), img_size=32,
              cls_token_position='double')
    assert vim.get_layer_depth('backbone.cls_token_tail', 'backbone.') == \
        (0, 26)
    assert vim.get_layer_depth('backbone.patch_embed.proj.weight',
                               'backbone.') == (0, 26)
    assert vim.get_layer_depth('backbone.layers.10.mixer.D',
                               'backbone.') == (11, 26)
    assert vim.get_layer_depth('backbone.norm_f.weight', 'backbone.') == \
        (25, 26)
    assert vim.get_layer_depth('decode_head.conv_seg.weight',
                               'backbone.') == (25, 26)
    # Hier-Vim as mmpretrain's Swin: blocks counted over the stages, each
    # patch merging with its stage's last block
    hier = HierVim(dict(embed_dims=8, depths=(2, 2, 5, 2)))
    assert hier.get_layer_depth('patch_embed.projection.weight') == (0, 13)
    assert hier.get_layer_depth('stages.0.blocks.1.norm1.weight') == (2, 13)
    assert hier.get_layer_depth('stages.2.blocks.0.mixer.A_log') == (5, 13)
    assert hier.get_layer_depth('stages.1.downsample.reduction.weight') == \
        (4, 13)
    assert hier.get_layer_depth('norm3.weight') == (12, 13)
    for name, _ in hier.named_parameters():
        depth, num = hier.get_layer_depth(name)
        assert 0 <= depth < num


def test_hier_vim_layer_decay():
    model = HierVim(dict(embed_dims=8, depths=(2, 2, 5, 2)))
    groups = _groups_by_param(model, dict(layer_decay_rate=0.9))
    lr = {name: groups[id(p)]['lr'] for name, p in model.named_parameters()}
    assert lr['patch_embed.projection.weight'] == pytest.approx(1e-3 * 0.9**12)
    assert lr['stages.3.blocks.1.mixer.in_proj.weight'] == \
        pytest.approx(1e-3 * 0.9)
    assert lr['norm3.weight'] == pytest.approx(1e-3)


def test_config_errors():
    with pytest.raises(ValueError, match='layer_decay_rate'):
        _groups_by_param(Classifier(), dict(decay_rate=0.9))
    with pytest.raises(ValueError, match='get_layer_depth'):
        _groups_by_param(nn.Linear(2, 2), dict(layer_decay_rate=0.9))
