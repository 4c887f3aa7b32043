"""RNGStateHook: states round-trip, validation leaves them alone, a resume
with another number of ranks says so. (The end-to-end check, a killed and
resumed run matching an uninterrupted one, is
tests/test_tools/test_fault_tolerance.py.)"""
import random
from types import SimpleNamespace

import numpy as np
import torch
from mmengine.logging import MMLogger

import mmvim  # noqa: F401
from mmvim.engine import RNGStateHook, get_rng_states, set_rng_states


def _draw():
    return (random.random(), np.random.rand(), torch.rand(1).item())


def test_states_round_trip():
    states = get_rng_states()
    first = _draw()
    set_rng_states(states)
    assert _draw() == first


def test_validation_leaves_the_generators_alone():
    hook = RNGStateHook()
    states = get_rng_states()
    expected = _draw()
    set_rng_states(states)
    hook.before_val(None)
    _draw()  # what validation consumes (dataloader seeds)
    hook.after_val(None)
    assert _draw() == expected


def test_checkpoint_carries_one_entry_per_rank_and_other_sizes_warn(
        tmp_path):
    log = tmp_path / 'log.txt'
    MMLogger.get_instance('test_rng_state_hook', log_file=str(log))
    hook = RNGStateHook()
    hook.after_train_iter(None, 0)
    checkpoint = {}
    hook.before_save_checkpoint(None, checkpoint)
    assert len(checkpoint['rng_states']) == 1  # a single process
    hook.after_load_checkpoint(None, dict(rng_states=[checkpoint[
        'rng_states'][0]] * 2))
    hook.before_train(SimpleNamespace(iter=2, epoch=0))
    assert 'holds RNG states of 2 ranks, this run has 1' in log.read_text()
