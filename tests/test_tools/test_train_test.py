"""tools/train.py, tools/test.py and --resume on the synthetic ImageNet set.

A 2-layer Vim keeps the runs short; the demo config is otherwise used as is
(real ImageNet dataset class, real pipeline, Runner, checkpoints).
"""
import glob
import os.path as osp
import pickle
import re
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'vim',
                  'vim-tiny-p16_1xb32-200it_synthetic-in1k-64px.py')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic_in1k')
    result = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'dataset_converters',
                                  'make_synthetic_imagenet.py'), str(root),
         '--train-per-class', '4', '--val-per-class', '2'],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert osp.isfile(osp.join(root, 'meta', 'train.txt'))
    assert len(glob.glob(osp.join(root, 'train', '*', '*.JPEG'))) == 24
    return str(root)


@pytest.fixture
def small_config(tmp_path):
    """The demo config with a 2-layer, 32-wide Vim."""
    path = tmp_path / 'small_cfg.py'
    path.write_text(f"""_base_ = [{CONFIG!r}]
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, depth=2)),
    head=dict(in_channels=32))
""")
    return str(path)


def _options(data_root, max_iters):
    return [
        '--cfg-options',
        f'train_cfg.max_iters={max_iters}', 'train_cfg.val_interval=1000',
        'train_dataloader.batch_size=4', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False',
        'default_hooks.checkpoint.interval=2',
        'default_hooks.logger.interval=1',
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
    ]


def _tool(name, *args):
    return subprocess.run([sys.executable, osp.join(ROOT, 'tools', name),
                           *args], capture_output=True, text=True, cwd=ROOT)


def test_train_test_resume(dataset, small_config, tmp_path):
    work_dir = str(tmp_path / 'work')
    train = _tool('train.py', small_config, '--work-dir', work_dir,
                  *_options(dataset, 2))
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = osp.join(work_dir, 'iter_2.pth')
    assert osp.isfile(ckpt)

    out = str(tmp_path / 'preds.pkl')
    test = _tool('test.py', small_config, ckpt, '--work-dir', str(tmp_path / 't'),
                 '--out', out, *_options(dataset, 2))
    assert test.returncode == 0, test.stderr[-3000:]
    top1 = float(re.search(r"'accuracy/top1': ([0-9.]+)", test.stdout)[1])
    # the dumped predictions: one per val image, and the printed top-1
    # is theirs
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    with open(osp.join(dataset, 'meta', 'val.txt')) as f:
        assert len(preds) == sum(1 for _ in f)
    hits = [int(p['pred_label'][0]) == int(p['gt_label'][0]) for p in preds]
    assert abs(100 * sum(hits) / len(hits) - top1) < 1e-3

    resumed = _tool('train.py', small_config, '--work-dir', work_dir,
                    '--resume',
                    *_options(dataset, 4))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert 'resumed epoch: 0, iter: 2' in log
    assert osp.isfile(osp.join(work_dir, 'iter_4.pth'))

    # --resume CKPT: an explicit checkpoint, into another work dir
    other = str(tmp_path / 'explicit')
    explicit = _tool('train.py', small_config, '--work-dir', other,
                     '--resume', osp.join(work_dir, 'iter_2.pth'),
                     *_options(dataset, 3))
    assert explicit.returncode == 0, explicit.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 2' in explicit.stdout + explicit.stderr
    assert osp.isfile(osp.join(other, 'iter_3.pth'))


def test_bad_arguments_are_clear(dataset, tmp_path):
    missing = _tool('test.py', CONFIG, str(tmp_path / 'nope.pth'))
    assert missing.returncode != 0 and 'nope.pth not found' in missing.stderr
    amp = _tool('train.py', CONFIG, '--amp', '--work-dir', str(tmp_path))
    assert amp.returncode != 0 and '--amp needs a CUDA GPU' in amp.stderr


def test_dist_train_runs_two_processes(dataset, tmp_path):
    """tools/dist_train.sh with 2 processes on the CPU (gloo): the ranks
    see disjoint images and keep identical weights; dist_test.sh scores
    every val image once, with the single-process top-1."""
    from small_runs import (check_two_gloo_ranks, launch, options,
                            probe_env, tiny_classifier_config)
    config = tiny_classifier_config(
        tmp_path / 'ranked.py', "custom_hooks = [dict(type='RankRecordHook')]")
    work_dir = str(tmp_path / 'dist')
    result = launch('dist_train.sh', config, '2', '--work-dir', work_dir,
                    *options(dataset, 2, 'env_cfg.dist_cfg.backend=gloo'))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    check_two_gloo_ranks(work_dir, batch_size=4)
    ckpt = osp.join(work_dir, 'iter_2.pth')

    out = str(tmp_path / 'dist_preds.pkl')
    test = launch('dist_test.sh', config, ckpt, '2', '--work-dir',
                  str(tmp_path / 'dist_test'), '--out', out,
                  *options(dataset, 2, 'env_cfg.dist_cfg.backend=gloo'))
    assert test.returncode == 0, test.stderr[-3000:]
    top1 = float(re.search(r"'accuracy/top1': ([0-9.]+)", test.stdout)[1])
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    with open(osp.join(dataset, 'meta', 'val.txt')) as f:
        val = sorted(line.split()[0] for line in f)
    assert sorted(osp.basename(p['img_path']) for p in preds) == \
        sorted(osp.basename(v) for v in val)
    single = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'test.py'), config, ckpt,
         '--work-dir', str(tmp_path / 'single_test'), *options(dataset, 2)],
        capture_output=True, text=True, cwd=ROOT, env=probe_env())
    assert single.returncode == 0, single.stderr[-3000:]
    assert float(re.search(r"'accuracy/top1': ([0-9.]+)",
                           single.stdout)[1]) == pytest.approx(top1)
