"""mmvim: Vision Mamba (Vim) for OpenMMLab 2.0.

``import mmvim`` (or ``custom_imports=dict(imports=['mmvim'])`` in a config)
registers the Vim backbone and everything around it for mmpretrain, mmseg and
mmdet alike, and installs the weights-only-safe checkpoint loader and the
atomic writer of local checkpoint files.
"""
from .engine import (register_atomic_local_backend,
                     register_safe_checkpoint_loader)
from .version import __version__  # noqa: F401
from . import models  # noqa: F401,E402  (registers the modules)

register_safe_checkpoint_loader()
register_atomic_local_backend()
