"""The optimizer every Vim config builds, on the config's own model at full
size (on the meta device: shapes and names only, no memory): weight-decay
groups by the reference rule, layer-wise lr decay of the dense configs
between layer 0 and the heads, and their out_indices."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'vim', '*.py')) +
                 glob.glob(osp.join(ROOT, 'configs', 'vim', 'ablations',
                                    '*.py')))
# (layer decay, out_indices) of the paper's dense recipes
DENSE = {
    'upernet_vim-tiny_8xb2-160k_ade20k-512x512.py': (0.92, (5, 11, 17, 23)),
    'upernet_vim-small_8xb2-160k_ade20k-512x512.py': (0.95, (5, 11, 17, 23)),
    'cascade-mask-rcnn_vim-tiny-simplefpn_8xb8-lsj-380k_coco-1024x1024.py':
    (0.837, (23, )),
}
DENSE.update({  # Table 4's Segmenter configs: the last map only
    f'segmenter-mask_vim-tiny-bidir-{row}_8xb2-160k_ade20k-512x512.py':
    (0.92, (23, ))
    for row in ('none', 'sequence', 'layers', 'ssm', 'ssm-conv')})


def _built(path):
    cfg = Config.fromfile(path)
    scope = cfg.default_scope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS'])
    __import__(f'{scope}.utils', fromlist=['register_all_modules'])\
        .register_all_modules(init_default_scope=False)
    model_cfg = cfg.model.copy()
    model_cfg.backbone.init_cfg = None
    # mmseg's Segmenter head calls .item() while it initialises, which a
    # meta tensor cannot answer: its (Vim-Ti) models are built on the CPU
    head = cfg.model.get('decode_head', {}).get('type')
    device = 'cpu' if head == 'SegmenterMaskTransformerHead' else 'meta'
    with DefaultScope.overwrite_default_scope(scope), torch.device(device):
        model = registry.MODELS.build(model_cfg)
    return cfg, model


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_optimizer_groups(path):
    cfg, model = _built(path)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    groups = {id(p): g for g in wrapper.optimizer.param_groups
              for p in g['params']}
    assert len(groups) == sum(p.requires_grad for p in model.parameters())
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    bb = model.backbone
    mixer = bb.layers[0].mixer

    def wd(param):
        return groups[id(param)]['weight_decay']

    # the reference rule: A_log / A_b_log decayed; D, norms, biases,
    # pos_embed and the class tokens not (the ablation variants lack some)
    decayed = [getattr(mixer, n, None) for n in ('A_log', 'A_b_log')]
    decayed += [mixer.in_proj.weight, mixer.x_proj.weight,
                bb.patch_embed.proj.weight]
    exempt = [getattr(mixer, n, None) for n in ('D', 'D_b')]
    exempt += [mixer.dt_proj.bias, bb.layers[0].norm.weight,
               bb.norm_f.weight] + bb._token_params()
    assert all(wd(p) == base_wd for p in decayed if p is not None)
    assert all(wd(p) == 0 for p in exempt if p is not None)
    assert len(bb._token_params()) == (bb.pos_embed is not None) + \
        bb.num_cls_tokens
    head = next(p for n, p in model.named_parameters()
                if not n.startswith('backbone.') and p.dim() > 1)
    assert wd(head) == base_wd
    ratio = groups[id(mixer.in_proj.weight)]['lr'] / groups[id(head)]['lr']
    name = osp.basename(path)
    if name in DENSE:
        rate, out_indices = DENSE[name]
        depth = len(bb.layers)
        assert ratio == pytest.approx(rate**depth)  # layer 0: id 1
        assert groups[id(bb.pos_embed)]['lr'] / groups[id(head)]['lr'] == \
            pytest.approx(rate**(depth + 1))
        assert bb.out_indices == out_indices
    elif 'ade20k' not in name and 'coco' not in name:
        assert ratio == 1.0  # classification from scratch: no layer decay
