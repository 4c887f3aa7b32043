"""Pure functions that turn Vim checkpoints into mmvim's layouts.

The released Vim files (``vim_t_midclstok_76p1acc.pth`` and friends) hold
``{'model': state_dict, 'model_ema', 'optimizer', 'lr_scheduler', 'epoch',
'scaler', 'args'}``; their backbone keys (``patch_embed.proj.*``,
``pos_embed``, ``cls_token``, ``layers.N.{norm,mixer}.*``, ``norm_f.weight``)
are exactly those of :class:`mmvim.models.Vim`, and ``head.*`` is the
ImageNet classifier. OpenMMLab checkpoints (mmpretrain / mmseg / mmdet)
prefix the backbone with ``backbone.``. No model is needed here.
"""
import re

class VimCheckpointError(ValueError):
    """Weights that are not a Vim's, or not this Vim's: a user error,
    reported by the tools as its message alone."""


_VIM_MARKER = re.compile(r'^layers\.\d+\.mixer\.')
# buffers of the reference's rotary embedding (``if_rope``): mmvim computes
# them from the grid, so they are dropped on load
_DERIVED = ('rope.', )


def checkpoint_state_dict(checkpoint, use_ema=False):
    """The weights inside a loaded checkpoint file.

    Args:
        checkpoint (dict): what ``torch.load`` returned.
        use_ema (bool): take the released files' ``'model_ema'`` weights
            instead of ``'model'``.
    """
    if not isinstance(checkpoint, dict):
        raise TypeError(f'expected a checkpoint dict, got {type(checkpoint)}')
    if use_ema:
        if 'model_ema' not in checkpoint:
            raise KeyError("use_ema=True but the checkpoint has no 'model_ema'"
                           f' entry (it has {sorted(checkpoint)})')
        state_dict = checkpoint['model_ema']
    elif 'model' in checkpoint:
        state_dict = checkpoint['model']
    elif 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
    else:
        state_dict = checkpoint
    # checkpoints saved from DistributedDataParallel wrap names in 'module.'
    return {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}


def _strip_backbone(state_dict):
    return {k[len('backbone.'):]: v for k, v in state_dict.items()
            if k.startswith('backbone.')}


def is_official_vim(state_dict):
    """True for a released-layout Vim state dict (no ``backbone.`` prefix)."""
    return any(_VIM_MARKER.match(k) for k in state_dict)


def convert_official_to_mmpretrain(state_dict):
    """Released Vim 'model' state dict -> mmpretrain ``ImageClassifier`` keys.

    ``head.weight/bias`` -> ``head.fc.weight/bias`` (``LinearClsHead``);
    everything else -> ``backbone.<key>``.
    """
    if not is_official_vim(state_dict):
        if any(_VIM_MARKER.match(k) for k in _strip_backbone(state_dict)):
            raise VimCheckpointError('this state dict is already in the OpenMMLab '
                             "layout ('backbone.*' keys); no conversion needed")
        raise VimCheckpointError("not a Vim state dict: no 'layers.N.mixer.*' keys "
                         f'(first keys: {list(state_dict)[:5]})')
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(_DERIVED):
            continue
        if key.startswith('head.'):
            converted['head.fc.' + key[len('head.'):]] = value
        else:
            converted['backbone.' + key] = value
    return converted


def vim_backbone_weights(state_dict):
    """Backbone weights from any supported layout.

    Returns:
        tuple: (backbone state dict, dropped keys, layout name), where the
        layout is ``'released Vim'`` or ``'OpenMMLab'``.
    """
    if is_official_vim(state_dict):
        weights = {k: v for k, v in state_dict.items()
                   if not k.startswith(('head.', ) + _DERIVED)}
        return weights, sorted(k for k in state_dict if k not in weights
                               ), 'released Vim'
    weights = _strip_backbone(state_dict)
    derived = [k for k in weights if k.startswith(_DERIVED)]
    for key in derived:
        del weights[key]
    if not any(_VIM_MARKER.match(k) for k in weights):
        raise VimCheckpointError(
            "not a Vim checkpoint: no 'layers.N.mixer.*' or "
            "'backbone.layers.N.mixer.*' keys (first keys: "
            f'{list(state_dict)[:5]}); pass a released Vim file or a '
            'checkpoint trained with mmvim')
    dropped = sorted([k for k in state_dict if not k.startswith('backbone.')]
                     + ['backbone.' + k for k in derived])
    return weights, dropped, 'OpenMMLab'


def describe_vim_weights(weights):
    """(embed_dims, depth, patch-embed kernel) of a backbone state dict."""
    proj = weights.get('patch_embed.proj.weight')
    depth = 1 + max((int(m.group(1)) for m in
                     (re.match(r'^layers\.(\d+)\.', k) for k in weights) if m),
                    default=-1)
    embed_dims = None if proj is None else proj.shape[0]
    kernel = None if proj is None else tuple(proj.shape[-2:])
    return embed_dims, depth, kernel
