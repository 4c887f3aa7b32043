"""torch.distributed without a GPU: the Slurm environment, the gloo model
wrapper and its SyncBN -> BN conversion, and mmengine's conversion for a
single process."""
import os
import stat

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.runner import Runner

import mmvim  # noqa: F401
from mmvim.engine import CPUDistributedDataParallel, slurm_dist_env


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    """An ``scontrol`` that expands any node list to node07, node08."""
    script = tmp_path / 'bin' / 'scontrol'
    script.parent.mkdir()
    script.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\n'
                      'printf "node07\\nnode08\\n"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv('PATH', f'{script.parent}{os.pathsep}'
                       f'{os.environ["PATH"]}')


SLURM = dict(SLURM_PROCID='3', SLURM_NTASKS='4', SLURM_LOCALID='1',
             SLURM_NODELIST='node[07-08]', SLURM_JOB_ID='123456')


def test_slurm_env_from_srun_variables(fake_scontrol):
    env = slurm_dist_env(dict(SLURM))
    assert env == dict(RANK='3', WORLD_SIZE='4', LOCAL_RANK='1',
                       MASTER_ADDR='node07', MASTER_PORT='23456')


def test_slurm_env_keeps_given_master(fake_scontrol):
    env = slurm_dist_env(dict(SLURM, MASTER_ADDR='10.0.0.1',
                              MASTER_PORT='29501'))
    assert env['MASTER_ADDR'] == '10.0.0.1' and env['MASTER_PORT'] == '29501'


def test_slurm_env_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match=r"\['SLURM_PROCID'\].*srun"):
        slurm_dist_env({k: v for k, v in SLURM.items()
                        if k != 'SLURM_PROCID'})
    monkeypatch.setenv('PATH', str(tmp_path))  # no scontrol
    with pytest.raises(RuntimeError, match='set MASTER_ADDR'):
        slurm_dist_env(dict(SLURM))


class SyncBNModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.SyncBatchNorm(4)
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.SyncBatchNorm(4))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.head(self.bn(self.conv(torch.stack(inputs))))
        return dict(loss=out.mean()) if mode == 'loss' else out


def _sync_bns(model):
    return sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


@pytest.fixture
def gloo_group(tmp_path):
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store',
                            rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_cpu_ddp_turns_sync_bn_into_bn(gloo_group, tmp_path):
    log = tmp_path / 'log.txt'
    MMLogger.get_instance('test_cpu_ddp', log_file=str(log))
    model = SyncBNModel()
    weight = model.bn.weight
    wrapped = CPUDistributedDataParallel(module=model,
                                         broadcast_buffers=False)
    assert _sync_bns(wrapped) == 0
    assert wrapped.module.bn.weight is weight  # the same parameters
    assert wrapped.device_ids is None
    # SyncBN would raise here: it needs GPU tensors while a group is up
    out = wrapped(list(torch.randn(2, 3, 4, 4)), mode='loss')
    out['loss'].backward()
    assert weight.grad is not None
    assert '2 SyncBatchNorm layers run as BatchNorm' in log.read_text()


def test_single_process_run_turns_sync_bn_into_bn(tmp_path):
    """mmengine does this for a non-distributed Runner; mmvim relies on it
    for the SyncBN configs trained with tools/train.py."""
    runner = Runner(model=SyncBNModel(), work_dir=str(tmp_path),
                    experiment_name='syncbn_single_process')
    assert _sync_bns(runner.model) == 0
    assert 'SyncBatchNorm (SyncBN) layers in the model will be ' \
        'automatically reverted' in open(
            MMLogger.get_current_instance().log_file).read()
