"""tools/dist_train.sh and tools/dist_test.sh with two gloo processes on the
synthetic ADE20K set, with the SyncBN of the ADE20K recipe: both ranks
train on different images with the same (gradient-averaged) weights, SyncBN
runs as BN on the CPU, and the test metrics are gathered from both ranks."""
import glob
import os.path as osp
import pickle
import re
import subprocess
import sys

import pytest

from small_runs import (ROOT, check_two_gloo_ranks, launch,
                        loader_options)

CONFIG = osp.join(ROOT, 'configs', 'vim',
                  'upernet_vim-tiny_1xb4-300it_synthetic-ade20k-128x128.py')
NUM_TRAIN, NUM_VAL = 8, 5  # an odd val set: one rank gets a padded sample


def _options(data_root):
    return ['--cfg-options', 'train_cfg.max_iters=2',
            *loader_options(data_root)]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Two gloo ranks train the SyncBN config for 2 iterations."""
    base = tmp_path_factory.mktemp('dist_seg')
    data_root = str(base / 'ade')
    made = subprocess.run(
        [sys.executable,
         osp.join(ROOT, 'tools', 'dataset_converters',
                  'make_synthetic_ade20k.py'), data_root,
         '--num-train', str(NUM_TRAIN), '--num-val', str(NUM_VAL)],
        capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    # the demo config with SyncBN (as in the 512x512 recipe) and a 4-layer,
    # 32-wide Vim
    config = base / 'syncbn_small.py'
    config.write_text(f"""_base_ = [{CONFIG!r}]
custom_imports = dict(imports=['mmvim', 'run_probes'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='RankRecordHook')]
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, depth=4),
                  out_indices=(0, 1, 2, 3)),
    neck=dict(embed_dim=32, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[32, 32, 32, 32], channels=32,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=32, channels=16, norm_cfg=norm_cfg))
""")
    work_dir = str(base / 'train')
    train = launch('dist_train.sh', str(config), '2', '--work-dir',
                   work_dir, *_options(data_root))
    assert train.returncode == 0, train.stderr[-3000:]
    return data_root, str(config), work_dir, train.stdout + train.stderr


def test_two_ranks_train_different_images_with_one_model(trained):
    _, _, work_dir, log = trained
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert re.search(r'SyncBN needs GPUs: \d+ SyncBatchNorm layers run as '
                     'BatchNorm', log)
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))

    check_two_gloo_ranks(work_dir, batch_size=4)


def test_metrics_are_gathered_from_both_ranks(trained, tmp_path):
    data_root, config, work_dir, _ = trained
    out = str(tmp_path / 'preds.pkl')
    test = launch('dist_test.sh', config, osp.join(work_dir, 'iter_2.pth'),
                   '2', '--work-dir', str(tmp_path / 'test'), '--out', out,
                   *_options(data_root))
    assert test.returncode == 0, test.stderr[-3000:]
    assert re.search(r"'mIoU': [0-9.]+", test.stdout)
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    val_images = glob.glob(osp.join(data_root, 'images', 'validation', '*'))
    assert len(preds) == NUM_VAL == len(val_images)
    assert sorted(osp.basename(p['img_path']) for p in preds) == \
        sorted(osp.basename(p) for p in val_images)
