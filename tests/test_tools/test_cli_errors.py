"""A user's mistake on the command line ends in its message alone and a
non-zero exit status, never a traceback (tracebacks are for bugs)."""
import os.path as osp
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'vim',
                  'vim-tiny-p16_1xb32-200it_synthetic-in1k-64px.py')
COCO_CONFIG = osp.join(
    ROOT, 'configs', 'vim',
    'cascade-mask-rcnn_vim-tiny-simplefpn_1xb2-300it_synthetic-coco-256x256.py')


def _tool(*args):
    return subprocess.run([sys.executable, osp.join(ROOT, 'tools', *args[:1]),
                           *args[1:]], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('cli')
    garbage = tmp / 'garbage.pth'
    garbage.write_text('garbage\n')
    not_vim = tmp / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}}, not_vim)
    return tmp, str(garbage), str(not_vim)


def test_user_errors_print_the_message_alone(files):
    tmp, garbage, not_vim = files
    cases = [
        (('train.py', 'configs/missing.py'), 'config configs/missing.py '
         'not found'),
        (('test.py', 'configs/missing.py', garbage), 'config '
         'configs/missing.py not found'),
        (('test.py', CONFIG, str(tmp / 'missing.pth')), 'checkpoint '
         f'{tmp / "missing.pth"} not found'),
        (('model_converters/vim2mmvim.py', garbage, str(tmp / 'out.pth')),
         f'checkpoint {garbage} is corrupt, truncated or not a PyTorch file'),
        (('model_converters/vim2mmvim.py', not_vim, str(tmp / 'out.pth')),
         "not a Vim state dict: no 'layers.N.mixer.*' keys"),
        (('train.py', CONFIG, '--cfg-options',
          'train_dataloader.dataset.data_root=/nonexistent/in1k'),
         "train_dataloader.dataset.data_root='/nonexistent/in1k' does not "
         'exist (ImageNet). To fix: put ImageNet-1k under DATA_ROOT'),
        (('train.py', COCO_CONFIG, '--cfg-options',
          'train_dataloader.dataset.data_root=/nonexistent/coco/'),
         "train_dataloader.dataset.data_root='/nonexistent/coco/' does not "
         'exist (CocoDataset). To fix: put COCO 2017 under DATA_ROOT'),
    ]
    for args, message in cases:
        result = _tool(*args)
        assert result.returncode == 1, (args, result.stderr[-2000:])
        assert 'Traceback' not in result.stderr, (args, result.stderr)
        assert result.stderr.strip().splitlines()[-1].startswith(
            f'error: {message}'), (args, result.stderr[-2000:])
    assert not (tmp / 'out.pth').exists()
