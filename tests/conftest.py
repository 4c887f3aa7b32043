import os.path as osp
import sys

import pytest
import torch

CONFORMANCE_DIR = osp.join(osp.dirname(__file__), 'data', 'conformance')
sys.path.insert(0, CONFORMANCE_DIR)

import make_official_weights  # noqa: E402


@pytest.fixture
def official_checkpoint(tmp_path):
    """Write a released-layout Vim file: ``official_checkpoint(arch, seed)``
    -> path (a checkpoint container exactly like the released files)."""

    def write(arch='vim-ti', seed=0):
        path = tmp_path / f'{arch}_seed{seed}.pth'
        torch.save(make_official_weights.make_checkpoint(arch, seed), path)
        return str(path)

    return write
