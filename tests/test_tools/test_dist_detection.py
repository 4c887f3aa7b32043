"""tools/dist_train.sh and tools/dist_test.sh with two gloo processes on the
synthetic COCO-layout set: both ranks train the detector on different
images with the same (gradient-averaged) weights, and CocoMetric scores the
predictions gathered from both ranks."""
import os.path as osp
import pickle
import re
import subprocess
import sys

import pytest

from small_runs import (ROOT, check_two_gloo_ranks, launch,
                        loader_options)

CONFIG = osp.join(
    ROOT, 'configs', 'vim',
    'cascade-mask-rcnn_vim-tiny-simplefpn_1xb2-300it_synthetic-coco-256x256.py')
NUM_TRAIN, NUM_VAL = 8, 5  # an odd val set: one rank gets a padded sample


def _options(data_root):
    ann = f'{data_root}/annotations/instances_val2017.json'
    return ['--cfg-options', 'train_cfg.max_iters=2',
            f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
            *loader_options(f'{data_root}/')]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Two gloo ranks train the detection demo config (2-layer, 32-wide
    Vim) for 2 iterations of 2 images each."""
    base = tmp_path_factory.mktemp('dist_det')
    data_root = str(base / 'coco')
    made = subprocess.run(
        [sys.executable,
         osp.join(ROOT, 'tools', 'dataset_converters',
                  'make_synthetic_coco.py'), data_root,
         '--num-train', str(NUM_TRAIN), '--num-val', str(NUM_VAL)],
        capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    config = base / 'det_small.py'
    config.write_text(f"""_base_ = [{CONFIG!r}]
custom_imports = dict(imports=['mmvim', 'run_probes'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='RankRecordHook')]
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, depth=2)),
    neck=dict(in_channels=32))
""")
    work_dir = str(base / 'train')
    train = launch('dist_train.sh', str(config), '2', '--work-dir',
                   work_dir, *_options(data_root))
    assert train.returncode == 0, train.stderr[-3000:]
    return data_root, str(config), work_dir, train.stdout + train.stderr


def test_two_ranks_train_different_images_with_one_model(trained):
    _, _, work_dir, log = trained
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))
    check_two_gloo_ranks(work_dir, batch_size=2)


def test_coco_metric_over_both_ranks(trained, tmp_path):
    data_root, config, work_dir, _ = trained
    out = str(tmp_path / 'preds.pkl')
    test = launch('dist_test.sh', config, osp.join(work_dir, 'iter_2.pth'),
                   '2', '--work-dir', str(tmp_path / 'test'), '--out', out,
                   *_options(data_root))
    assert test.returncode == 0, test.stderr[-3000:]
    assert re.search(r"'coco/bbox_mAP': [0-9.-]+", test.stdout)
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert sorted(p['img_id'] for p in preds) == \
        list(range(100001, 100001 + NUM_VAL))
