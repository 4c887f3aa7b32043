"""Segmentation end to end on the synthetic ADE20K set, single process, CPU:
tools/train.py learns (mIoU far above chance), tools/test.py evaluates the
saved checkpoint and writes overlays, --resume continues at the saved
iteration, tools/demo/image_demo.py draws a prediction. One short run shared
by all the checks keeps CI time down."""
import glob
import os.path as osp
import re
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'vim',
                  'upernet_vim-tiny_1xb4-300it_synthetic-ade20k-128x128.py')
ITERS = 120
# measured: mIoU 45.6 after 75 and 56.2 after 150 iterations of this
# recipe; predicting the majority class everywhere scores about 12
MIN_MIOU = 30.0


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True,
                          text=True, cwd=ROOT)


def _options(data_root, max_iters):
    return ['--cfg-options', f'train_cfg.max_iters={max_iters}',
            f'train_cfg.val_interval={max_iters}',
            f'param_scheduler.1.end={ITERS}',
            f'default_hooks.checkpoint.interval={ITERS}',
            'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False',
            'val_dataloader.num_workers=0',
            'val_dataloader.persistent_workers=False',
            'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False',
            f'train_dataloader.dataset.data_root={data_root}',
            f'val_dataloader.dataset.data_root={data_root}',
            f'test_dataloader.dataset.data_root={data_root}']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp('seg')
    data_root = str(base / 'ade')
    made = _run(osp.join(ROOT, 'tools', 'dataset_converters',
                         'make_synthetic_ade20k.py'), data_root)
    assert made.returncode == 0, made.stderr
    work_dir = str(base / 'work')
    train = _run(osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir',
                 work_dir, *_options(data_root, ITERS))
    assert train.returncode == 0, train.stderr[-3000:]
    return data_root, work_dir, osp.join(work_dir, f'iter_{ITERS}.pth')


def test_learns_and_test_py_evaluates_with_overlays(trained, tmp_path):
    data_root, _, ckpt = trained
    show_dir = str(tmp_path / 'overlays')
    test = _run(osp.join(ROOT, 'tools', 'test.py'), CONFIG, ckpt,
                '--work-dir', str(tmp_path / 'test'), '--show-dir', show_dir,
                *_options(data_root, ITERS))
    assert test.returncode == 0, test.stderr[-3000:]
    miou = float(re.search(r"'mIoU': ([0-9.]+)", test.stdout).group(1))
    print(f'synthetic ADE20K mIoU after {ITERS} iterations: {miou:.1f}')
    assert miou > MIN_MIOU
    overlays = glob.glob(osp.join(show_dir, '**', '*.png'), recursive=True)
    assert len(overlays) == 40  # one per validation image


def test_resume_continues_at_saved_iteration(trained):
    data_root, work_dir, _ = trained
    resumed = _run(osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir',
                   work_dir, '--resume', *_options(data_root, ITERS + 2))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'resumed epoch: 0, iter: {ITERS}' in resumed.stdout + resumed.stderr
    assert osp.isfile(osp.join(work_dir, f'iter_{ITERS + 2}.pth'))


def test_image_demo_draws_the_prediction(trained, tmp_path):
    data_root, _, ckpt = trained
    out = str(tmp_path / 'demo' / 'pred.png')
    source = osp.join(data_root, 'images', 'validation',
                      'ADE_val_00000001.jpg')
    demo = _run(osp.join(ROOT, 'tools', 'demo', 'image_demo.py'), source,
                CONFIG, ckpt, '--gt', osp.join(data_root, 'annotations',
                                               'validation',
                                               'ADE_val_00000001.png'),
                '--out-file', out)
    assert demo.returncode == 0, demo.stderr[-3000:]
    import cv2
    import numpy as np
    image = cv2.imread(out)
    # input, prediction and ground truth: 128 px enlarged 3x (nearest)
    # under a 28-px title bar, 8 px apart
    assert image.shape[:2] == (28 + 384, 3 * 384 + 2 * 8)
    enlarged = cv2.resize(cv2.imread(source), (384, 384),
                          interpolation=cv2.INTER_NEAREST)
    panels = [image[28:, k * 392:k * 392 + 384].astype(int) for k in range(3)]
    assert np.abs(panels[0] - enlarged).max() <= 2  # png of the jpg's pixels
    assert np.abs(panels[1] - enlarged).mean() > 5  # the prediction drawn
    assert np.abs(panels[2] - enlarged).mean() > 5  # the ground truth drawn


def test_missing_data_root_names_it_and_how_to_prepare(tmp_path):
    missing = str(tmp_path / 'ADEChallengeData2016')
    train = _run(osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir',
                 str(tmp_path / 'w'), '--cfg-options',
                 f'train_dataloader.dataset.data_root={missing}')
    assert train.returncode != 0
    assert f"data_root='{missing}' does not exist" in train.stderr
    assert 'make_synthetic_ade20k.py' in train.stderr
    assert 'annotations/{training,validation}' in train.stderr
