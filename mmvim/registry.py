"""Registries mmvim registers into.

mmvim registers its modules in mmengine's ROOT registries. The scoped
registries of mmpretrain, mmseg and mmdet are children of those roots and
fall back to their parent for a name they do not hold, so one registration
makes ``type='Vim'`` buildable by bare name under every ``default_scope``,
without importing (or requiring) any of the downstream packages.
"""
from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS  # noqa: F401
from mmengine.registry import MODEL_WRAPPERS  # noqa: F401
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS  # noqa: F401
from mmengine.registry import TRANSFORMS  # noqa: F401
