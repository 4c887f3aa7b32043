"""Checkpoints carry the random generators' states, so a resumed run draws
the same random numbers as an uninterrupted one."""
import logging
import random

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop

from mmvim.registry import HOOKS


def get_rng_states():
    """The global generators of this process: python ``random``, numpy,
    torch CPU and (once CUDA is in use) every CUDA device."""
    states = dict(python=random.getstate(), numpy=np.random.get_state(),
                  torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Inverse of :func:`get_rng_states`."""
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


class _SetRNGStatesAfterReplay:
    """Stands in for ``IterBasedTrainLoop.dataloader_iterator``: after the
    loop has replayed the ``replay`` batches trained before the checkpoint
    (the replay itself draws random numbers), sets ``states`` just before
    the first new batch is fetched."""

    def __init__(self, iterator, replay, states):
        self._iterator = iterator
        self._replay = replay
        self._states = states

    def __iter__(self):
        return self

    def __next__(self):
        if self._replay == 0 and self._states is not None:
            set_rng_states(self._states)
            self._states = None
        self._replay -= 1
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Saves the random generators' states in every checkpoint and restores
    them on ``--resume``.

    mmengine's checkpoints hold the weights, optimizer, schedulers, EMA and
    the iteration, but not the global generators that augmentations, drop
    path and dropout draw from; a resumed run re-seeds them and so differs
    from an uninterrupted one. With this hook it does not (on the CPU, with
    deterministic kernels, the weights are bit-identical).

    - Each rank's states are taken after every training iteration / epoch
      (after the optimizer step, before ``CheckpointHook`` saves) and, in a
      distributed run, gathered to rank 0, which alone writes checkpoints:
      ``checkpoint['rng_states']`` is a list indexed by rank.
    - On resume, rank r gets entry r back when the iteration-based loop has
      replayed the dataloader up to the checkpoint (epoch-based loops: at
      the start of training). A run with another number of ranks keeps its
      seeded generators, with a warning.
    - Validation leaves the generators as it found them, so the states in a
      checkpoint are those the next training iteration starts from, whether
      or not a validation ran in between.
    """

    # after the optimizer step and the EMA update, before CheckpointHook
    # (VERY_LOW) saves
    priority = 'LOW'

    def __init__(self):
        self._saved = None
        self._resumed = None
        self._before_val = None

    def _take(self):
        states = get_rng_states()
        self._saved = (all_gather_object(states)
                       if get_world_size() > 1 else [states])

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self._take()

    def after_train_epoch(self, runner):
        self._take()

    def before_save_checkpoint(self, runner, checkpoint):
        if self._saved is None:  # saved outside training
            self._take()
        checkpoint['rng_states'] = self._saved

    def after_load_checkpoint(self, runner, checkpoint):
        self._resumed = checkpoint.get('rng_states')

    def before_train(self, runner):
        states, self._resumed = self._resumed, None
        if runner.iter == 0 and runner.epoch == 0:
            return  # a fresh run (or load_from): nothing to continue
        if states is None:
            print_log('the resumed checkpoint has no RNG states (saved '
                      'without RNGStateHook): random generators stay '
                      'seeded, the run will not repeat an uninterrupted '
                      'one exactly', logger='current', level=logging.WARNING)
            return
        if len(states) != get_world_size():
            print_log(f'the resumed checkpoint holds RNG states of '
                      f'{len(states)} ranks, this run has '
                      f'{get_world_size()}: random generators stay seeded',
                      logger='current', level=logging.WARNING)
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop) and runner.iter > 0:
            loop.dataloader_iterator = _SetRNGStatesAfterReplay(
                loop.dataloader_iterator, runner.iter, states[get_rank()])
            when = f'after the dataloader replays {runner.iter} iterations'
        else:
            set_rng_states(states[get_rank()])
            when = 'now'
        print_log(f'RNG states of iteration {runner.iter} from the '
                  f'checkpoint (python, numpy, torch) are restored {when}',
                  logger='current')

    def before_val(self, runner):
        self._before_val = get_rng_states()

    def after_val(self, runner):
        if self._before_val is not None:
            set_rng_states(self._before_val)
            self._before_val = None
