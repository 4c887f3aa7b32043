"""Start torch.distributed on machines without a GPU.

mmengine's pytorch and slurm launchers pin each rank to a CUDA device before
they initialise the process group, and wrap the model in DDP with that
device, both of which fail on a CPU-only machine. When no GPU is usable,
mmvim initialises the group itself with gloo (mmengine then sees it
initialised and skips its own init) and wraps the model in
:class:`CPUDistributedDataParallel`: DDP without device ids, with SyncBN
turned into BN (SyncBN needs GPU tensors)."""
import os
import subprocess

import torch
import torch.distributed as dist
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm

from mmvim.registry import MODEL_WRAPPERS

# torchrun's variables; mmengine reads LOCAL_RANK too
_TORCH_DIST_ENV = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def slurm_dist_env(environ=None):
    """torch.distributed's environment for a task that srun started.

    RANK, WORLD_SIZE and LOCAL_RANK come from SLURM_PROCID, SLURM_NTASKS and
    SLURM_LOCALID; MASTER_ADDR (unless set) is the first host of
    SLURM_NODELIST as ``scontrol show hostnames`` expands it; MASTER_PORT
    (unless set) is 20000 + SLURM_JOB_ID % 10000, so that two jobs sharing
    a node do not collide on one port.

    Returns:
        dict[str, str]: the variables to put into ``os.environ``.
    """
    environ = os.environ if environ is None else environ
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')
               if k not in environ]
    if missing:
        raise RuntimeError(
            f'--launcher slurm needs {missing} in the environment; start '
            'the job with srun (tools/slurm_train.sh)')
    env = dict(RANK=environ['SLURM_PROCID'],
               WORLD_SIZE=environ['SLURM_NTASKS'],
               LOCAL_RANK=environ.get('SLURM_LOCALID', '0'))
    if 'MASTER_ADDR' in environ:
        env['MASTER_ADDR'] = environ['MASTER_ADDR']
    else:
        try:
            hosts = subprocess.run(
                ['scontrol', 'show', 'hostnames', environ['SLURM_NODELIST']],
                capture_output=True, text=True, check=True).stdout.split()
        except (OSError, subprocess.CalledProcessError) as error:
            raise RuntimeError(
                'could not expand SLURM_NODELIST='
                f'{environ["SLURM_NODELIST"]!r} with scontrol ({error}); '
                'set MASTER_ADDR to the first node of the job') from error
        env['MASTER_ADDR'] = hosts[0]
    job = int(environ.get('SLURM_JOB_ID', 0))
    env['MASTER_PORT'] = environ.get('MASTER_PORT', str(20000 + job % 10000))
    return env


def init_cpu_distributed(cfg, launcher):
    """For ``--launcher pytorch`` or ``slurm`` without CUDA: a gloo process
    group from the torchrun / srun environment, and
    :class:`CPUDistributedDataParallel` as the model wrapper (the model
    stays on the CPU). Returns True when it initialised the group."""
    if launcher not in ('pytorch', 'slurm') or torch.cuda.is_available() or \
            dist.is_initialized():
        return False
    if launcher == 'slurm':
        os.environ.update(slurm_dist_env())
    missing = [k for k in _TORCH_DIST_ENV if k not in os.environ]
    if missing:
        raise RuntimeError(
            f'--launcher pytorch needs {missing} in the environment; start '
            'the job with tools/dist_train.sh or torchrun')
    dist.init_process_group(backend='gloo')
    wrapper = dict(type='CPUDistributedDataParallel', broadcast_buffers=False)
    wrapper.update(cfg.get('model_wrapper_cfg') or {})
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    print_log(f'no CUDA device: torch.distributed uses gloo on the CPU '
              f'(rank {dist.get_rank()}, world size '
              f'{dist.get_world_size()}, launcher {launcher})',
              logger='current')
    return True


def _is_sync_batchnorm(module):
    if isinstance(module, torch.nn.SyncBatchNorm):
        return True
    # mmcv's MMSyncBN, which revert_sync_batchnorm converts as well
    return type(module).__name__ == 'SyncBatchNorm'


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """:class:`MMDistributedDataParallel` for processes on the CPU (gloo).

    SyncBN only runs on GPU tensors, so its layers become plain BatchNorm
    (each rank then normalises over its own batch) before DDP wraps the
    model; one log line says how many. Device ids are always None: the
    model stays on the CPU.
    """

    def __init__(self, module, **kwargs):
        num_sync_bn = sum(map(_is_sync_batchnorm, module.modules()))
        if num_sync_bn:
            module = revert_sync_batchnorm(module)
            print_log(f'SyncBN needs GPUs: {num_sync_bn} SyncBatchNorm '
                      'layers run as BatchNorm on the CPU (statistics per '
                      'rank, not synchronised)', logger='current')
        kwargs['device_ids'] = None
        super().__init__(module=module, **kwargs)


def shutdown_distributed():
    """Destroy the default process group at the end of a run. A gloo group
    left to the interpreter's exit can abort a rank that finished its work
    ('terminate called without an active exception'), failing the job."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
