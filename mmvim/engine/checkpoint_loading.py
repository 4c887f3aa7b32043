"""Safe loading of local checkpoints under torch >= 2.6 (``weights_only``).

torch >= 2.6 loads with ``weights_only=True``, which refuses two kinds of
files this project must read: checkpoints saved by mmengine's Runner (their
``message_hub`` holds ``HistoryBuffer`` objects with numpy arrays) and the
released Vim files (their ``'args'`` is an ``argparse.Namespace``).

Instead of turning safe loading off, mmvim replaces mmengine's loader for
local paths (the one every entry point goes through: ``Runner.resume``,
``Runner.load_checkpoint``, ``load_checkpoint``, ``init_cfg=Pretrained``,
mmpretrain / mmseg / mmdet inference APIs) with one that keeps
``weights_only=True`` and allows exactly the few plain-data classes those
files contain. Any other class still makes the load fail.
"""
import argparse
import importlib
import os
import os.path as osp
import pickle
import re

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

_NUMERIC_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                   np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                   np.float64)


def _numpy_multiarray():
    if int(np.__version__.split('.')[0]) >= 2:  # numpy 2 renamed numpy.core
        return importlib.import_module('numpy._core.multiarray')
    return importlib.import_module('numpy.core.multiarray')


def _history_buffer_getattr(obj, name):
    """Stands in for ``getattr`` during a weights-only load.

    A ``HistoryBuffer`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')``; only that lookup is allowed, so the
    allow-list does not open ``getattr`` on anything else.
    """
    if obj is HistoryBuffer and not name.startswith('_') and callable(
            getattr(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}), which is not '
        'allowed in a weights-only load')


def checkpoint_safe_globals():
    """The classes a weights-only load of an mmvim checkpoint may build."""
    multiarray = _numpy_multiarray()
    return [
        argparse.Namespace,
        HistoryBuffer,
        (_history_buffer_getattr, 'builtins.getattr'),
        multiarray._reconstruct,
        multiarray.scalar,
        np.ndarray,
        np.dtype,
    ] + [type(np.dtype(t)) for t in _NUMERIC_DTYPES]


class CheckpointFileError(RuntimeError):
    """A checkpoint file that cannot be loaded: corrupt, truncated, not a
    PyTorch file, or holding objects outside the weights-only safe set."""


def load_checkpoint_file(filename, map_location=None):
    """``torch.load(filename, weights_only=True)`` with mmvim's safe set.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointFileError: the file is truncated / corrupt, or holds
            objects outside the safe set; the message names the file.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} can not be found')

    def corrupt(error):
        return CheckpointFileError(
            f'checkpoint {filename} is corrupt, truncated or not a PyTorch '
            f'file ({str(error).strip().splitlines()[0]}); it was left '
            f'untouched; {_other_checkpoints(filename)}')

    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        try:
            return torch.load(filename, map_location=map_location,
                              weights_only=True)
        except pickle.UnpicklingError as error:
            # only a global outside the allow-list means "unsafe"; any other
            # unpickling failure is a file torch cannot even parse
            found = re.search(r'Unsupported global: GLOBAL (\S+)|'
                              r'asks for (getattr\(.*?\)), which is not '
                              r'allowed', str(error))
            if not found:
                raise corrupt(_unpickler_reason(error)) from error
            raise CheckpointFileError(
                f'refusing to load {filename}: it holds '
                f'{found.group(1) or found.group(2)}, outside the '
                'weights-only safe set. Only load files you trust; for such '
                'a file, re-save its state dict with torch.save({'
                '"state_dict": torch.load(path, weights_only=False)['
                '"state_dict"]}, new_path)') from error
        except (EOFError, RuntimeError, ValueError) as error:
            raise corrupt(error) from error


def _unpickler_reason(error):
    """The unpickler's own complaint inside torch's weights-only message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    after = [line for line in lines
             if not line.startswith(('Weights only load failed',
                                     'Please file an issue',
                                     'Check the documentation'))]
    return after[0] if after else lines[0]


def _other_checkpoints(filename):
    """What to do instead: the other checkpoints next to ``filename``,
    newest first."""
    folder = osp.dirname(osp.abspath(filename))
    others = sorted(
        (osp.join(folder, name) for name in os.listdir(folder)
         if name.endswith('.pth') and
         not osp.samefile(osp.join(folder, name), filename)),
        key=osp.getmtime, reverse=True)
    if not others:
        return 'save it again'
    return ('use an older checkpoint of the same run instead (e.g. '
            f'--resume {others[0]}; all in that folder: '
            f'{", ".join(osp.basename(p) for p in others)}) or save it again')


def register_safe_checkpoint_loader():
    """Make :func:`load_checkpoint_file` mmengine's loader for local paths."""
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_checkpoint_file, force=True)
