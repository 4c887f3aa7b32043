"""Build a config's model (with a checkpoint's weights), for deployment."""
import os.path as osp

from mmengine.config import Config


def build_model(config, cfg_options=None):
    """The model of ``config`` (a path), freshly initialised, on the CPU.

    The config's top-level ``data_preprocessor`` goes into the model as
    mmengine's Runner puts it there (mmpretrain configs keep it apart), and
    the model is built in the config's ``default_scope``. A missing config
    is a FileNotFoundError.
    """
    from mmengine.registry import MODELS, DefaultScope
    if not osp.isfile(config):
        raise FileNotFoundError(f'config {config} not found')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        return MODELS.build(cfg.model)


def load_model(config, checkpoint, cfg_options=None):
    """:func:`build_model` with the weights of ``checkpoint`` (all keys
    must fit), in eval mode. A missing file is a FileNotFoundError, weights
    that do not fit a ValueError naming the keys."""
    from mmengine.runner import load_checkpoint
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint} not found')
    model = build_model(config, cfg_options)
    try:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True,
                        logger='silent')
    except RuntimeError as error:  # mmengine's strict key check
        raise ValueError(f'{checkpoint} does not fit {config}: '
                         f'{str(error).strip()}') from None
    return model.eval()
