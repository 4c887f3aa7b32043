"""Local checkpoint files are written whole or not at all."""
import os

import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.runner.checkpoint import save_checkpoint

import mmvim  # noqa: F401  (installs the atomic backend)
from mmvim.engine import AtomicLocalBackend


def test_local_paths_use_the_atomic_backend(tmp_path):
    assert isinstance(get_file_backend(str(tmp_path / 'iter_2.pth')),
                      AtomicLocalBackend)
    path = tmp_path / 'sub' / 'iter_2.pth'
    save_checkpoint({'state_dict': {'w': torch.arange(5.)}}, str(path))
    assert torch.equal(torch.load(path)['state_dict']['w'], torch.arange(5.))
    assert os.listdir(path.parent) == ['iter_2.pth']  # no temporary left


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'iter_4.pth'
    backend = AtomicLocalBackend()
    backend.put(b'old checkpoint', path)

    def killed(fd):  # the process dies after the data, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, 'fsync', killed)
    with pytest.raises(KeyboardInterrupt):
        backend.put(b'new checkp', path)
    assert path.read_bytes() == b'old checkpoint'
    assert os.listdir(tmp_path) == ['iter_4.pth']
    monkeypatch.undo()
    backend.put_text('text', path)
    assert path.read_text() == 'text'
