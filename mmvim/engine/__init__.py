from .checkpoint_loading import (checkpoint_safe_globals, load_checkpoint_file,
                                 register_safe_checkpoint_loader)
from .data_root_check import check_data_roots
from .distributed import init_cpu_distributed
from .optimizers import *  # noqa: F401,F403

__all__ = [
    'check_data_roots', 'init_cpu_distributed', 'checkpoint_safe_globals', 'load_checkpoint_file',
    'register_safe_checkpoint_loader'
]
