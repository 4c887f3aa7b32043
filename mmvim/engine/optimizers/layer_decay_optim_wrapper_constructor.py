from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from mmvim.registry import OPTIM_WRAPPER_CONSTRUCTORS

# Which parameters are not weight-decayed, besides every 1-D parameter and
# every bias:
# - 'reference': the rule of the run that trained the released weights
#   (timm's create_optimizer with VisionMamba.no_weight_decay(), hustvl/Vim
#   vim/main.py and vim/models_mamba.py): the position embedding and the
#   class tokens; A_log / A_b_log (E x N) ARE decayed, D / D_b (1-D) are not.
# - 'mamba': Mamba's intended rule (mamba_simple.py marks A_log and D
#   ``_no_weight_decay``): the above plus A_log, A_b_log, D, D_b.
NO_WEIGHT_DECAY = {
    'reference': ('pos_embed', 'cls_token', 'cls_token_head',
                  'cls_token_tail', 'dist_token'),
}
NO_WEIGHT_DECAY['mamba'] = NO_WEIGHT_DECAY['reference'] + (
    'A_log', 'A_b_log', 'D', 'D_b')


def is_no_weight_decay(name, param, rule='reference'):
    """True for 1-D parameters (norms, D), biases and the names of ``rule``
    in :data:`NO_WEIGHT_DECAY` ('reference' or 'mamba')."""
    if rule not in NO_WEIGHT_DECAY:
        raise ValueError(f'unknown no_decay_rule {rule!r}, choose from '
                         f'{sorted(NO_WEIGHT_DECAY)}')
    last = name.rsplit('.', 1)[-1]
    return param.ndim <= 1 or last == 'bias' or last in NO_WEIGHT_DECAY[rule]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class VimLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay for models with a Vim (or Hier-Vim) backbone.

    The backbone gives each parameter its layer depth ``i`` of ``n``
    (``backbone.get_layer_depth(name, 'backbone.')``, mmpretrain's idiom:
    Vim's embeddings 0, ``layers.i`` i + 1, everything outside the backbone
    n - 1); it gets ``lr = base_lr * rate ** (n - 1 - i)`` and no weight
    decay if :func:`is_no_weight_decay`.

    ``paramwise_cfg``:
        layer_decay_rate (float): the decay rate (required).
        no_decay_rule (str): 'reference' (default: the rule that trained
            the released weights; A_log decayed) or 'mamba' (no decay on
            A_log, A_b_log, D, D_b either).

    Example::

        optim_wrapper = dict(
            constructor='VimLayerDecayOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=6e-5, weight_decay=0.01),
            paramwise_cfg=dict(layer_decay_rate=0.92))
    """

    def __init__(self, optim_wrapper_cfg, paramwise_cfg=None):
        if not paramwise_cfg or 'layer_decay_rate' not in paramwise_cfg:
            raise ValueError(
                'VimLayerDecayOptimWrapperConstructor needs '
                'paramwise_cfg=dict(layer_decay_rate=...), e.g. 0.92 for '
                'Vim-Ti or 0.95 for Vim-S')
        unknown = set(paramwise_cfg) - {'layer_decay_rate', 'no_decay_rule'}
        if unknown:
            raise ValueError(f'unknown paramwise_cfg keys {sorted(unknown)}; '
                             'allowed: layer_decay_rate, no_decay_rule')
        rule = paramwise_cfg.get('no_decay_rule', 'reference')
        if rule not in NO_WEIGHT_DECAY:
            raise ValueError(f'unknown no_decay_rule {rule!r}, choose from '
                             f'{sorted(NO_WEIGHT_DECAY)}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params, module, prefix='', **kwargs):
        rate = self.paramwise_cfg['layer_decay_rate']
        rule = self.paramwise_cfg.get('no_decay_rule', 'reference')
        backbone = getattr(module, 'backbone', module)
        name_prefix = 'backbone.' if backbone is not module else ''
        if not hasattr(backbone, 'get_layer_depth'):
            raise ValueError(
                'VimLayerDecayOptimWrapperConstructor needs a backbone with '
                'get_layer_depth(param_name, prefix) (Vim, HierVim, '
                f"mmpretrain's ViT and Swin); {type(backbone).__name__} has "
                'none')

        groups = {}
        num_layers = None
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id, num_layers = backbone.get_layer_depth(name, name_prefix)
            no_decay = is_no_weight_decay(name, param, rule)
            key = (layer_id, no_decay)
            if key not in groups:
                scale = rate**(num_layers - 1 - layer_id)
                groups[key] = dict(
                    params=[],
                    lr=self.base_lr * scale,
                    lr_scale=scale,
                    layer_id=layer_id,
                    weight_decay=0. if no_decay else self.base_wd)
            groups[key]['params'].append(param)
        params.extend(groups[key] for key in sorted(groups))
        print_log(
            f'layer-wise lr decay {rate} over {num_layers} layer depths: '
            f'{len(groups)} parameter groups, lr scale from '
            f'{rate**(num_layers - 1):.3g} (embeddings) to 1 (heads)',
            logger='current')
