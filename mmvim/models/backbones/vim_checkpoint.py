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

from ..layers.pos_embed import (cls_token_indices, infer_square_grid,
                                resize_pos_embed)

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


def fit_pos_embed(loaded, own_shape, grid, cls_position='middle',
                  mode='bicubic', name='pos_embed'):
    """A checkpoint's position embedding fitted to a model's: resized over
    the patch grid (class-token rows kept apart) when its grid differs.

    Args:
        loaded: the checkpoint's (1, J' + k, D).
        own_shape: the model's pos_embed shape (1, J + k, D).
        grid: the model's patch grid (rows, cols), J = rows * cols.
        cls_position: where the k class rows sit ('middle', 'head',
            'double' or None).
    Returns:
        (pos_embed, the source grid, or None when nothing was resized: the
        same shape, or a width mismatch the fit check reports).
    """
    if tuple(loaded.shape) == tuple(own_shape) or loaded.dim() != 3 \
            or loaded.shape[-1] != own_shape[-1]:
        return loaded, None
    num_cls = len(cls_token_indices(0, cls_position))
    src_grid = infer_square_grid(loaded.shape[1] - num_cls, name)
    return resize_pos_embed(loaded, src_grid, grid, mode,
                            cls_position), src_grid


def check_vim_weights_fit(weights, own_shapes, model_desc, arch_zoo,
                          source):
    """Raise :class:`VimCheckpointError` naming every missing, unexpected
    and mismatched key and the likely cause, unless ``weights`` fit a Vim
    whose state-dict shapes are ``own_shapes``.

    Args:
        weights (dict): the checkpoint's backbone weights.
        own_shapes (dict): name -> shape of the model's state dict.
        model_desc (tuple): the model's (embed_dims, depth, patch kernel).
        arch_zoo (dict): arch name -> dict(embed_dims, depth), to suggest.
        source (str): the checkpoint's path, for the message.
    """
    embed_dims_own = model_desc[0]
    missing = [k for k in own_shapes if k not in weights]
    unexpected = [k for k in weights if k not in own_shapes]
    mismatched = [
        f'{k} {tuple(weights[k].shape)} vs {tuple(own_shapes[k])}'
        for k in own_shapes if k in weights and k != 'pos_embed'
        and tuple(weights[k].shape) != tuple(own_shapes[k])
    ]
    pos = weights.get('pos_embed')
    if pos is not None and 'pos_embed' in own_shapes and \
            pos.shape[-1] != embed_dims_own:
        mismatched.append(f'pos_embed {tuple(pos.shape)} vs '
                          f'{tuple(own_shapes["pos_embed"])}')
    if not (missing or unexpected or mismatched):
        return
    embed_dims, depth, kernel = describe_vim_weights(weights)
    problems = []
    for title, keys in (('missing', missing), ('unexpected', unexpected),
                        ('shape mismatch (checkpoint vs model)', mismatched)):
        if keys:
            shown = ', '.join(keys[:6]) + (' ...' if len(keys) > 6 else '')
            problems.append(f'{title} ({len(keys)}): {shown}')
    cause = (f'the checkpoint is a Vim with embed_dims={embed_dims}, '
             f'depth={depth}, patch kernel {kernel}; this backbone has '
             f'embed_dims={model_desc[0]}, depth={model_desc[1]}, patch '
             f'kernel {model_desc[2]}')
    if (embed_dims, depth) != tuple(model_desc[:2]):
        matches = sorted(name for name, cfg in arch_zoo.items()
                         if len(name) > 2 and cfg['embed_dims'] == embed_dims
                         and cfg['depth'] == depth)
        cause += (f": set arch='{matches[0]}'" if matches else
                  ': set arch to match the checkpoint')
    raise VimCheckpointError(f'{source} does not fit this Vim backbone; '
                             + '; '.join(problems) + f'. Likely cause: {cause}')
