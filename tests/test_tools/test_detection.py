"""Detection and instance segmentation end to end on the CPU.

- The synthetic COCO-layout set is read by mmdet's CocoDataset.
- One full 1024x1024 training step of the COCO config (Vim-Ti, 24 layers,
  4096 tokens, SimpleFPN, Cascade Mask R-CNN) runs, peak memory printed.
- tools/train.py trains the demo config on the synthetic set, tools/test.py
  evaluates the checkpoint with CocoMetric (bbox and segm) and writes an
  overlay per image, tools/demo/image_demo.py draws detections, --resume
  continues. One short run of a small model is shared by these checks.
- A short run of the demo recipe (6 of Vim-Ti's 24 layers) detects and
  segments the held-out synthetic images: bbox and segm mAP far above 0.
"""
import glob
import json
import os.path as osp
import re
import subprocess
import sys

import pytest

from small_runs import loader_options

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs', 'vim')
COCO = osp.join(
    CONFIGS, 'cascade-mask-rcnn_vim-tiny-simplefpn_8xb8-lsj-380k_coco-1024x1024.py')
DEMO = osp.join(
    CONFIGS,
    'cascade-mask-rcnn_vim-tiny-simplefpn_1xb2-300it_synthetic-coco-256x256.py')
ITERS = 2


def _run(*args, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True,
                          text=True, cwd=ROOT, **kwargs)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco'))
    made = _run(osp.join(ROOT, 'tools', 'dataset_converters',
                         'make_synthetic_coco.py'), root)
    assert made.returncode == 0, made.stderr
    return root


def test_synthetic_coco_is_read_by_mmdet(coco):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    classes = ('person', 'car', 'chair', 'potted plant')
    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = CocoDataset(
            data_root=coco, ann_file='annotations/instances_val2017.json',
            data_prefix=dict(img='val2017/'), metainfo=dict(classes=classes),
            test_mode=True,
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='LoadAnnotations', with_bbox=True,
                           with_mask=True)])
        sample = dataset[0]
    assert len(dataset) == 40
    with open(osp.join(coco, 'annotations', 'instances_val2017.json')) as f:
        raw = json.load(f)
    assert {c['name'] for c in raw['categories']} == set(classes)
    assert sample['img'].shape == (256, 256, 3)
    assert len(sample['gt_bboxes']) == len(sample['gt_masks']) >= 1
    # the polygon masks cover the painted objects inside their boxes
    for box, mask in zip(sample['gt_bboxes'].tensor,
                         sample['gt_masks'].to_ndarray()):
        x0, y0, x1, y1 = box.round().int().tolist()
        inside = mask[y0:y1, x0:x1].sum()
        assert inside >= 0.9 * mask.sum() > 0


STEP_SCRIPT = r'''
import resource, sys, time
import torch
import mmvim  # noqa: F401
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmdet.registry import DATASETS, MODELS
from mmdet.utils import register_all_modules
register_all_modules(init_default_scope=False)
config, data_root = sys.argv[1:3]
cfg = Config.fromfile(config)
cfg.model.backbone.init_cfg = None
with DefaultScope.overwrite_default_scope('mmdet'):
    dataset = DATASETS.build(dict(cfg.train_dataloader.dataset,
                                  data_root=data_root))
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    batch = dataset[0]
    data = model.data_preprocessor(
        dict(inputs=[batch['inputs']], data_samples=[batch['data_samples']]),
        training=True)
    start = time.perf_counter()
    losses = model(**data, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    loss.backward()
    seconds = time.perf_counter() - start
grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
assert all(g is not None and torch.isfinite(g).all() for g in grads)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f'input {tuple(data["inputs"].shape)} tokens '
      f'{model.backbone.pos_embed.shape[1]} loss {loss.item():.3f} '
      f'step {seconds:.1f} s peak RSS {peak:.2f} GiB')
'''


def test_full_1024_training_step(coco):
    """Forward + backward of the COCO config at 1024x1024, batch 1, on an
    LSJ-augmented sample of the synthetic set."""
    step = _run('-c', STEP_SCRIPT, COCO, coco + '/')
    assert step.returncode == 0, step.stderr[-3000:]
    line = step.stdout.strip().splitlines()[-1]
    print(f'1024x1024 Cascade Mask R-CNN + Vim-Ti training step: {line}')
    assert line.startswith('input (1, 3, 1024, 1024) tokens 4097')


def _options(data_root, max_iters, checkpoint_interval=ITERS):
    return ['--cfg-options', f'train_cfg.max_iters={max_iters}',
            f'train_cfg.val_interval={max_iters}',
            f'default_hooks.checkpoint.interval={checkpoint_interval}',
            *loader_options(f'{data_root}/'),
            'val_evaluator.ann_file='
            f'{data_root}/annotations/instances_val2017.json',
            'test_evaluator.ann_file='
            f'{data_root}/annotations/instances_val2017.json']


@pytest.fixture(scope='module')
def trained(coco, tmp_path_factory):
    base = tmp_path_factory.mktemp('det')
    config = base / 'det_small.py'
    config.write_text(f"""_base_ = [{DEMO!r}]
model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=32, depth=2)),
             neck=dict(in_channels=32))
""")
    work_dir = str(base / 'work')
    train = _run(osp.join(ROOT, 'tools', 'train.py'), str(config),
                 '--work-dir', work_dir, *_options(coco, ITERS))
    assert train.returncode == 0, train.stderr[-3000:]
    return str(config), work_dir, osp.join(work_dir, f'iter_{ITERS}.pth')


def test_test_py_evaluates_with_coco_metric_and_overlays(coco, trained,
                                                        tmp_path):
    config, _, ckpt = trained
    show_dir = str(tmp_path / 'overlays')
    test = _run(osp.join(ROOT, 'tools', 'test.py'), config, ckpt,
                '--work-dir', str(tmp_path / 'test'), '--show-dir', show_dir,
                *_options(coco, ITERS))
    assert test.returncode == 0, test.stderr[-3000:]
    assert re.search(r"'coco/bbox_mAP': [0-9.]+", test.stdout)
    assert re.search(r"'coco/segm_mAP': [0-9.]+", test.stdout)
    overlays = glob.glob(osp.join(show_dir, '**', '*.jpg'), recursive=True)
    assert len(overlays) == 40  # one per validation image


def test_image_demo_draws_detections(coco, trained, tmp_path):
    config, _, ckpt = trained
    out = str(tmp_path / 'det.png')
    image = sorted(glob.glob(osp.join(coco, 'val2017', '*.jpg')))[0]
    # every detection drawn (--score-thr 0): a short training's scores
    # may all be below the default 0.3
    demo = _run(osp.join(ROOT, 'tools', 'demo', 'image_demo.py'), image,
                config, ckpt, '--out-file', out, '--score-thr', '0')
    assert demo.returncode == 0, demo.stderr[-3000:]
    import cv2
    import numpy as np
    drawn = cv2.imread(out)  # input and prediction, enlarged side by side
    source = cv2.imread(image)
    height, width = source.shape[:2]
    factor = -(-384 // min(height, width))  # to at least 384 px
    big = (width * factor, height * factor)
    assert drawn.shape[:2] == (28 + big[1], 2 * big[0] + 8)
    enlarged = cv2.resize(source, big, interpolation=cv2.INTER_NEAREST)
    panels = [drawn[28:, k * (big[0] + 8):k * (big[0] + 8) + big[0]]
              .astype(int) for k in range(2)]
    assert np.abs(panels[0] - enlarged).max() <= 2  # png of the jpg's pixels
    changed = np.abs(panels[1] - enlarged).max(-1) > 30
    assert changed.mean() > 0.01  # boxes and masks drawn over the input


def test_resume_continues_at_saved_iteration(coco, trained):
    config, work_dir, _ = trained
    resumed = _run(osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
                   work_dir, '--resume', *_options(coco, ITERS + 1))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'resumed epoch: 0, iter: {ITERS}' in resumed.stdout + resumed.stderr
    assert osp.isfile(osp.join(work_dir, f'iter_{ITERS + 1}.pth'))


LEARN_ITERS = 150
# measured with a 6-layer Vim-Ti, this test's options: see docs/benchmarks.md
MIN_BBOX_MAP = 0.25
MIN_SEGM_MAP = 0.25


def test_learns_on_synthetic_coco(coco, tmp_path):
    """150 CPU iterations of the demo recipe from scratch (the demo config
    with 6 of the 24 layers) give bbox and segm mAP far above zero on the
    40 validation images, through CocoMetric."""
    config = tmp_path / 'det_6layers.py'
    config.write_text(f"""_base_ = [{DEMO!r}]
model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=192, depth=6)))
""")
    options = [*_options(coco, LEARN_ITERS, LEARN_ITERS),
               f'param_scheduler.1.end={LEARN_ITERS}']
    train = _run(osp.join(ROOT, 'tools', 'train.py'), str(config),
                 '--work-dir', str(tmp_path / 'work'), *options)
    assert train.returncode == 0, train.stderr[-3000:]
    log = train.stdout + train.stderr
    bbox = float(re.findall(r'coco/bbox_mAP: ([0-9.]+)', log)[-1])
    segm = float(re.findall(r'coco/segm_mAP: ([0-9.]+)', log)[-1])
    print(f'synthetic COCO after {LEARN_ITERS} iterations: bbox mAP '
          f'{bbox:.3f}, segm mAP {segm:.3f}')
    assert bbox > MIN_BBOX_MAP and segm > MIN_SEGM_MAP
