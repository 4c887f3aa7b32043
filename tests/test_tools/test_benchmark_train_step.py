"""tools/analysis_tools/benchmark_train_step.py: on the three synthetic
configs it builds the real model and optimizer wrapper, feeds a batch of
the config's training input size in its pipeline's format and steps the
optimizer; its JSON is checked, its timings never asserted. The training
input size it reads from every experiment config's pipeline matches the
size in the config's name, and bad input ends in a message."""
import glob
import json
import math
import os.path as osp
import re
import subprocess
import sys

import pytest
from mmengine.config import Config

from small_runs import ROOT, analysis_tool

SCRIPT = osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_train_step.py')
CONFIGS = osp.join(ROOT, 'configs', 'vim')
# config, batch (UperNet's BN needs 2), where the config states its size,
# the data sample and its ground-truth fields as the pipeline packs them
CASES = [
    ('upernet_vim-tiny_1xb4-300it_synthetic-ade20k-128x128.py', 2,
     'crop_size', 'SegDataSample', {'gt_sem_seg': 'PixelData'}),
    ('cascade-mask-rcnn_vim-tiny-simplefpn_1xb2-300it_synthetic-coco-256x256'
     '.py', 1, 'image_size', 'DetDataSample',
     {'gt_instances': {'bboxes': 'HorizontalBoxes', 'labels': 'Tensor',
                       'masks': 'BitmapMasks'}}),
    ('vim-tiny-p16_1xb32-200it_synthetic-in1k-64px.py', 1,
     'model.backbone.img_size', 'DataSample', {'gt_label': 'Tensor'}),
]


@pytest.fixture(scope='module')
def bench():
    return analysis_tool('benchmark_train_step')


def stated_size(cfg, key):
    value = cfg
    for part in key.split('.'):
        value = value[part]
    return [value, value] if isinstance(value, int) else list(value)


@pytest.mark.parametrize('name,batch,size_key,sample,fields', CASES,
                         ids=['segmentation', 'detection', 'classification'])
def test_steps_the_real_model_on_a_synthetic_batch(name, batch, size_key,
                                                   sample, fields, tmp_path):
    config = osp.join(CONFIGS, name)
    out = tmp_path / 'step.json'
    run = subprocess.run(
        [sys.executable, SCRIPT, config, '--batch', str(batch), '--warmup',
         '1', '--repeats', '2', '--threads', '1', '--out', str(out)],
        capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'median s' in run.stdout and 'peak RSS' in run.stdout

    result = json.loads(out.read_text())
    assert result['config'] == config
    height, width = stated_size(Config.fromfile(config), size_key)
    assert result['input_shape'] == [batch, 3, height, width]
    assert result['batch_inputs_shape'] == [batch, 3, height, width]
    assert result['data_sample'] == sample and result['gt_fields'] == fields
    assert result['optimizer'] == 'AdamW'
    assert [s['timed'] for s in result['steps']] == [False, True, True]
    assert len(result['step_seconds']) == 2
    assert all(math.isfinite(t) and t > 0 for t in result['step_seconds'])
    assert result['fastest_seconds'] == min(result['step_seconds'])
    assert result['fastest_seconds'] <= result['median_seconds'] <= max(
        result['step_seconds'])
    for step in result['steps']:
        assert math.isfinite(step['loss'])
        # every step's optimizer update moved the weights
        assert math.isfinite(step['param_change_l2'])
        assert step['param_change_l2'] > 0
    assert result['peak_rss_gib'] >= result['rss_after_build_gib'] > 0
    assert result['threads'] == 1 and result['device'] == 'cpu'
    for key in ('date', 'device_name', 'command', 'load_average_at_start',
                'load_average_at_end'):
        assert result[key]


def test_training_size_read_from_every_config(bench):
    """Each experiment config whose name carries its crop ({H}x{W} or
    {S}px) yields that size from its train pipeline; the ImageNet ones 224,
    the 1x COCO Mask R-CNN the bound of its (1333, 800) resize."""
    paths = sorted(glob.glob(osp.join(ROOT, 'configs', '*', '*.py')) +
                   glob.glob(osp.join(CONFIGS, 'ablations', '*.py')))
    checked = 0
    for path in paths:
        name = osp.basename(path)
        if name.startswith('default_runtime'):
            continue
        cfg = Config.fromfile(path)
        size, _ = bench.pipeline_size(bench.train_pipeline(cfg),
                                      cfg.default_scope)
        crop = re.search(r'-(\d+)x(\d+)\.py$', name)
        square = re.search(r'-(\d+)px\.py$', name)
        if crop:
            expected = (int(crop[1]), int(crop[2]))
        elif square:
            expected = (int(square[1]), ) * 2
        elif name.endswith('_in1k.py'):
            expected = (224, 224)
        else:
            expected = (800, 1333)  # the COCO Mask R-CNN recipes
        assert size == expected, name
        checked += 1
    assert checked >= 30


@pytest.mark.parametrize('argv,message', [
    (['configs/missing.py'], 'error: config configs/missing.py not found'),
    ([osp.join(ROOT, 'configs', '_base_', 'default_runtime_mmseg.py')],
     'has no train_dataloader and no optim_wrapper: give a training config'),
    ([osp.join(CONFIGS, CASES[0][0]), '--shape', '0', '8'],
     None),
])
def test_bad_input_ends_in_a_message(bench, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv + ['--out', 'unused.json'])
    if message is None:  # argparse: status 2 and the usage
        assert exit_.value.code == 2
        assert '--shape takes a positive height and width' in \
            capsys.readouterr().err
    else:
        assert str(exit_.value.code).startswith('error: ')
        assert str(exit_.value.code).endswith(message)
