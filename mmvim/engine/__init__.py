from .checkpoint_loading import (checkpoint_safe_globals, load_checkpoint_file,
                                 register_safe_checkpoint_loader)
from .optimizers import *  # noqa: F401,F403

__all__ = [
    'checkpoint_safe_globals', 'load_checkpoint_file',
    'register_safe_checkpoint_loader'
]
