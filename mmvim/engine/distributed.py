"""Start torch.distributed on machines without a GPU.

mmengine's pytorch launcher pins each rank to a CUDA device before it
initialises the process group, and wraps the model in DDP with that device,
both of which fail on a CPU-only machine. When no GPU is usable, mmvim
initialises the group itself with gloo (mmengine then sees it initialised
and skips its own init) and asks for DDP without device ids."""
import os

import torch
import torch.distributed as dist
from mmengine.logging import print_log


def init_cpu_distributed(cfg, launcher):
    """For ``--launcher pytorch`` without CUDA: gloo process group from the
    torchrun environment, and DDP without device ids (the model stays on
    the CPU). Returns True when it initialised the group."""
    if launcher != 'pytorch' or torch.cuda.is_available() or \
            dist.is_initialized():
        return False
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:
        raise RuntimeError(
            f'--launcher pytorch needs {missing} in the environment; start '
            'the job with tools/dist_train.sh or torchrun')
    dist.init_process_group(backend='gloo')
    wrapper = dict(type='MMDistributedDataParallel', broadcast_buffers=False)
    wrapper.update(cfg.get('model_wrapper_cfg') or {})
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    print_log(f'no CUDA device: torch.distributed uses gloo on the CPU '
              f'(rank {dist.get_rank()} of {dist.get_world_size()})',
              logger='current')
    return True
