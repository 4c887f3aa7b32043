"""The three demo scripts the README promises, run end to end through the
real scripts (environment check, synthetic data, tools/train.py for two
iterations, tools/test.py, image_demo.py, the summary line), with no
known third-party warning in their output."""
import os
import os.path as osp
import re
import subprocess

import cv2
import pytest

from mmvim.engine.cli import KNOWN_WARNINGS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMOS = {
    'demo.sh': r'demo: UperNet \+ Vim-Ti .* mIoU [0-9.]+, aAcc [0-9.]+ on '
    r'40 val images',
    'demo_classification.sh': r'demo: Vim-Ti trained from scratch .* top-1 '
    r'[0-9.]+% on [0-9]+ val images',
    'demo_detection.sh': r'demo: Cascade Mask R-CNN \+ Vim-Ti .* bbox mAP '
    r'[0-9.]+, segm mAP [0-9.]+',
}


@pytest.mark.parametrize('script', sorted(DEMOS))
def test_demo_script_runs_end_to_end(script, tmp_path):
    work_dir = tmp_path / 'work'
    env = dict(os.environ, MMVIM_DEMO_ITERS='2',
               MMVIM_DEMO_DATA=str(tmp_path / 'data'))
    result = subprocess.run(['bash', osp.join(ROOT, 'tools', script),
                             str(work_dir)], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(DEMOS[script], summary), summary
    assert (work_dir / 'iter_2.pth').is_file()
    for message, _, _ in KNOWN_WARNINGS:
        assert not re.search(message, output), message
    if script == 'demo_classification.sh':
        return
    overlays = sorted((work_dir / 'demo').glob('*.png'))
    assert len(overlays) == 3
    image = cv2.imread(str(overlays[0]))
    panels = 3 if script == 'demo.sh' else 2  # input, prediction (, truth)
    assert image.shape[0] >= 384 and image.shape[1] >= panels * 384
    # tools/test.py --show-dir: one overlay per val image (40)
    written = [p for p in (work_dir / 'test_overlays').rglob('*')
               if p.suffix in ('.png', '.jpg')]
    assert len(written) == 40
