"""Hooks the launch tests put into real training runs (imported by the run
through ``custom_imports``, with this folder on PYTHONPATH)."""
import hashlib
import json
import os
import os.path as osp
import signal

import torch.distributed as dist
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankRecordHook(Hook):
    """Each rank writes ``{work_dir}/ranks/rank{r}.json``: rank, world
    size, backend, Slurm job, the image paths of every training batch, and
    a digest of the weights after every iteration."""

    priority = 'LOWEST'

    def before_run(self, runner):
        self.record = dict(
            rank=get_rank(), world_size=get_world_size(),
            backend=dist.get_backend() if dist.is_initialized() else None,
            slurm_job=os.environ.get('SLURM_JOB_ID'), batches=[],
            weights=[])

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.record['batches'].append([
            sample.metainfo['img_path']
            for sample in data_batch['data_samples']])
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        digest = hashlib.sha1()
        for param in model.parameters():
            digest.update(param.detach().cpu().numpy().tobytes())
        self.record['weights'].append(digest.hexdigest())

    def after_run(self, runner):
        folder = osp.join(runner.work_dir, 'ranks')
        os.makedirs(folder, exist_ok=True)
        with open(osp.join(folder, f'rank{get_rank()}.json'), 'w') as f:
            json.dump(self.record, f)


@HOOKS.register_module()
class KillAfterCheckpointHook(Hook):
    """SIGKILLs its own process right after the checkpoint of iteration
    ``iteration`` is written (nothing of the process gets to clean up)."""

    priority = 'LOWEST'  # after CheckpointHook

    def __init__(self, iteration):
        self.iteration = iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)
