import os.path as osp
import subprocess
import sys

import torch

import make_official_weights

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'model_converters', 'vim2mmvim.py')


def _run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True,
                          text=True)


def test_converts_released_file(official_checkpoint, tmp_path):
    src = official_checkpoint('vim-s', 0)
    dst = str(tmp_path / 'out' / 'vim-small.pth')
    result = _run(src, dst)
    assert result.returncode == 0, result.stderr
    assert 'converted 415 tensors' in result.stdout
    converted = torch.load(dst, weights_only=True)
    released = make_official_weights.make_state_dict('vim-s', 0)
    sd = converted['state_dict']
    assert len(sd) == 415
    torch.testing.assert_close(sd['head.fc.weight'], released['head.weight'])
    torch.testing.assert_close(sd['backbone.layers.23.mixer.A_b_log'],
                               released['layers.23.mixer.A_b_log'])
    assert converted['meta']['converted_from'] == osp.basename(src)


def test_never_overwrites_without_force(official_checkpoint, tmp_path):
    src = official_checkpoint()
    dst = tmp_path / 'exists.pth'
    dst.write_bytes(b'precious')
    result = _run(src, str(dst))
    assert result.returncode != 0 and '--force' in result.stderr
    assert dst.read_bytes() == b'precious'
    result = _run(src, src)
    assert result.returncode != 0 and 'same file' in result.stderr
    assert _run(src, str(dst), '--force', '--ema').returncode == 0
    ema = torch.load(dst, weights_only=True)
    assert ema['meta']['source_entry'] == 'model_ema'
    # the stand-in's EMA weights differ from its 'model': the EMA ones came
    expected = make_official_weights.make_state_dict(
        'vim-ti', make_official_weights.EMA_SEED_OFFSET)
    torch.testing.assert_close(ema['state_dict']['backbone.cls_token'],
                               expected['cls_token'])
    torch.testing.assert_close(ema['state_dict']['head.fc.weight'],
                               expected['head.weight'])


def test_rejects_already_converted(official_checkpoint, tmp_path):
    first = str(tmp_path / 'a.pth')
    assert _run(official_checkpoint(), first).returncode == 0
    result = _run(first, str(tmp_path / 'b.pth'))
    assert result.returncode != 0 and 'already in the OpenMMLab layout' in result.stderr
