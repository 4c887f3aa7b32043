import os.path as osp
import subprocess
import sys

import pytest

from small_runs import ROOT


@pytest.fixture(scope='session')
def synthetic_in1k(tmp_path_factory):
    """The synthetic ImageNet-layout set, 4 training and 2 validation
    images per class (24 + 12)."""
    root = tmp_path_factory.mktemp('synthetic_in1k_small')
    made = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'dataset_converters',
                                  'make_synthetic_imagenet.py'), str(root),
         '--train-per-class', '4', '--val-per-class', '2'],
        capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    return str(root)
