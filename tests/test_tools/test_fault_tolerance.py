"""A training run killed with SIGKILL after a checkpoint and started again
with --resume ends with the same weights, EMA weights and optimizer state
as a run that was never interrupted (CPU, same seed); a truncated latest
checkpoint stops --resume with its name and deletes nothing.

The run has every source of randomness and state the issue names: random
augmentations, drop path, an EMA of the weights, a warm-up lr schedule, and
a validation right after the checkpoint it is killed at."""
import os
import os.path as osp
import signal
import subprocess
import sys

import pytest
import torch

from small_runs import ROOT, options, probe_env, tiny_classifier_config

ITERS = 4
EMA = ("custom_hooks = [dict(type='EMAHook', momentum=0.1, "
       "priority='ABOVE_NORMAL')]\n")
KILL = ("custom_hooks = [dict(type='EMAHook', momentum=0.1, "
        "priority='ABOVE_NORMAL'), dict(type='KillAfterCheckpointHook', "
        "iteration=2)]\n")


def _train(config, work_dir, data_root, *args):
    return subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config,
         '--work-dir', work_dir, *args,
         *options(data_root, ITERS, val_interval=2)],
        capture_output=True, text=True, cwd=ROOT, env=probe_env(),
        timeout=600)


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def _assert_same_tensors(ours, ref, what):
    if isinstance(ref, torch.Tensor):
        assert torch.equal(ours, ref), what
    elif isinstance(ref, dict):
        assert ours.keys() == ref.keys(), what
        for key in ref:
            _assert_same_tensors(ours[key], ref[key], f'{what}.{key}')
    elif isinstance(ref, (list, tuple)):
        assert len(ours) == len(ref), what
        for i, (a, b) in enumerate(zip(ours, ref)):
            _assert_same_tensors(a, b, f'{what}[{i}]')
    else:
        assert ours == ref, what


@pytest.fixture(scope='module')
def runs(synthetic_in1k, tmp_path_factory):
    """An uninterrupted run, and a run killed after its first checkpoint
    then resumed, both to ITERS."""
    base = tmp_path_factory.mktemp('fault_tolerance')
    whole = str(base / 'whole')
    done = _train(tiny_classifier_config(base / 'ema.py', EMA), whole,
                  synthetic_in1k)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = str(base / 'killed')
    kill = _train(tiny_classifier_config(base / 'kill.py', KILL), killed,
                  synthetic_in1k)
    assert kill.returncode == -signal.SIGKILL, kill.stderr[-3000:]
    assert osp.isfile(osp.join(killed, 'iter_2.pth'))
    assert not osp.exists(osp.join(killed, f'iter_{ITERS}.pth'))

    resumed = _train(tiny_classifier_config(base / 'ema.py', EMA), killed,
                     synthetic_in1k, '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return whole, killed, resumed.stdout + resumed.stderr, base


def test_resume_after_sigkill_repeats_the_uninterrupted_run(runs):
    whole, killed, log, _ = runs
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'RNG states of iteration 2 from the checkpoint' in log
    ref = _load(osp.join(whole, f'iter_{ITERS}.pth'))
    ours = _load(osp.join(killed, f'iter_{ITERS}.pth'))
    assert ours['meta']['iter'] == ref['meta']['iter'] == ITERS
    assert 'ema_state_dict' in ref and 'rng_states' in ref
    for key in ('state_dict', 'ema_state_dict', 'optimizer',
                'param_schedulers'):
        _assert_same_tensors(ours[key], ref[key], key)


def test_truncated_latest_checkpoint_is_an_error_that_names_it(runs,
                                                               synthetic_in1k):
    _, killed, _, base = runs
    latest = osp.join(killed, f'iter_{ITERS}.pth')
    with open(latest, 'r+b') as f:
        f.truncate(os.path.getsize(latest) // 2)
    before = {name: osp.getsize(osp.join(killed, name))
              for name in os.listdir(killed) if name.endswith('.pth')}
    again = _train(tiny_classifier_config(base / 'ema.py', EMA), killed,
                   synthetic_in1k, '--resume')
    assert again.returncode != 0
    assert f'checkpoint {latest} is corrupt, truncated or not a PyTorch ' \
        'file' in again.stderr
    assert f'--resume {osp.join(killed, "iter_2.pth")}' in again.stderr
    after = {name: osp.getsize(osp.join(killed, name))
             for name in os.listdir(killed) if name.endswith('.pth')}
    assert after == before and 'iter_2.pth' in after
