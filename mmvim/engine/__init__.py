from .atomic_local_backend import (AtomicLocalBackend,
                                   register_atomic_local_backend)
from .checkpoint_loading import (CheckpointFileError, checkpoint_safe_globals,
                                 load_checkpoint_file,
                                 register_safe_checkpoint_loader)
from .cli import (add_runner_args, config_from_args, exit_on_user_error,
                  load_config, quiet_known_warnings, write_json)
from .data_root_check import check_data_roots, check_load_from
from .distributed import (CPUDistributedDataParallel, init_cpu_distributed,
                          shutdown_distributed, slurm_dist_env)
from .hooks import RNGStateHook, get_rng_states, set_rng_states
from .optimizers import *  # noqa: F401,F403

__all__ = [
    'check_data_roots', 'check_load_from', 'init_cpu_distributed', 'checkpoint_safe_globals', 'load_checkpoint_file',
    'register_safe_checkpoint_loader', 'AtomicLocalBackend',
    'register_atomic_local_backend', 'CPUDistributedDataParallel',
    'shutdown_distributed', 'slurm_dist_env', 'RNGStateHook', 'get_rng_states', 'set_rng_states',
    'CheckpointFileError', 'add_runner_args', 'config_from_args',
    'exit_on_user_error', 'load_config', 'quiet_known_warnings', 'write_json'
]
