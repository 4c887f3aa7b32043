"""tools/deployment/pytorch2onnx.py end to end: a Vim-Ti classifier at 224
(static size) and the synthetic-ADE20K UperNet segmentor (--dynamic) are
exported through the real script (depth-reduced twins: Vim-Ti's width 192,
patch 16 and heads, fewer layers; all 24 layers export in about 50 s on
the 2-core CPU, docs/benchmarks.md), checked as ONNX files (checker, default
domain operators only, the scan as ONNX ``Scan``), and run in stock ONNX
Runtime against PyTorch eager; other input sizes work where --dynamic was
given and stop with what to do where not; user mistakes end in a message.
One export per model serves every test (module fixtures)."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from mmvim.deployment import (OPSET, OnnxExportWrapper, OnnxRunner,
                              build_model, load_model, non_standard_ops)
from small_runs import ROOT

CLS_CONFIG = osp.join(ROOT, 'configs', 'vim', 'vim-tiny-p16_8xb128_in1k.py')
SEG_CONFIG = osp.join(
    ROOT, 'configs', 'vim',
    'upernet_vim-tiny_1xb4-300it_synthetic-ade20k-128x128.py')
# layers of the twins (an export costs about 2 s per layer here, a
# dynamic one more); the segmentor's neck takes layers 0..3
CLS_DEPTH = 6
SEG_DEPTH = 4
# what float32 rounding leaves between ONNX Runtime and PyTorch (measured:
# below 1e-6)
TOLERANCE = 1e-4


def _script(*parts):
    """A tools/ script as a module (scripts are no package)."""
    path = osp.join(ROOT, 'tools', *parts)
    spec = importlib.util.spec_from_file_location(
        osp.splitext(parts[-1])[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytorch2onnx = _script('deployment', 'pytorch2onnx.py')


def _random_checkpoint(config, path):
    torch.manual_seed(0)
    model = build_model(config)
    model.init_weights()
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


def _relative_l2(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _eager(config, checkpoint, image):
    """What the model computes in PyTorch, as mmvim runs it."""
    wrapper = OnnxExportWrapper(load_model(config, checkpoint))
    with torch.no_grad():
        return wrapper(torch.from_numpy(image)).numpy()


def _twin_config(path, base, depth, extra=''):
    """``base`` with ``depth`` of Vim-Ti's layers, written to ``path``."""
    path.write_text(
        f'_base_ = [{base!r}]\n'
        'model = dict(backbone=dict(\n'
        f'    arch=dict(_delete_=True, embed_dims=192, depth={depth}),\n'
        f'    {extra}))\n')
    return str(path)


def _export(config, checkpoint, out, *options):
    result = pytorch2onnx.main([config, checkpoint, '--out', str(out),
                                *options])
    return dict(config=config, checkpoint=checkpoint, onnx=str(out),
                result=result)


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
    """Vim-Ti (6 layers) + linear head, exported for 224x224."""
    tmp = tmp_path_factory.mktemp('onnx_classifier')
    config = _twin_config(tmp / 'vim-ti-6layers.py', CLS_CONFIG, CLS_DEPTH)
    checkpoint = _random_checkpoint(config, tmp / 'vim-ti.pth')
    return _export(config, checkpoint, tmp / 'vim-ti.onnx')


@pytest.fixture(scope='module')
def segmentor(tmp_path_factory):
    """UperNet + a 4-layer Vim-Ti on the synthetic ADE20K config, exported
    with --dynamic (traced at 128x128)."""
    tmp = tmp_path_factory.mktemp('onnx_segmentor')
    config = _twin_config(tmp / 'upernet_vim-ti-4layers.py', SEG_CONFIG,
                          SEG_DEPTH, 'out_indices=(0, 1, 2, 3)')
    checkpoint = _random_checkpoint(config, tmp / 'upernet.pth')
    return _export(config, checkpoint, tmp / 'upernet.onnx', '--dynamic')


def test_classifier_matches_pytorch(classifier):
    assert classifier['result']['relative_l2'] < TOLERANCE  # the tool's
    runner = OnnxRunner(classifier['onnx'], num_threads=1)
    assert runner.metadata['task'] == 'classification'
    assert runner.metadata['channel_order'] == 'RGB'
    assert runner.metadata['mean'] == '123.675 116.28 103.53'
    image = np.random.default_rng(1).uniform(
        0, 255, (2, 3, 224, 224)).astype(np.float32)  # batch is free
    got = runner(image)
    want = _eager(classifier['config'], classifier['checkpoint'], image)
    assert got.shape == want.shape == (2, 1000)
    error = _relative_l2(got, want)
    print(f'Vim-Ti ({CLS_DEPTH} layers) classifier, ONNX Runtime vs '
          f'PyTorch: relative L2 {error:.2e}')
    assert error < TOLERANCE


def test_files_are_standard_onnx(classifier, segmentor):
    for exported, layers in ((classifier, CLS_DEPTH),
                             (segmentor, SEG_DEPTH)):
        onnx.checker.check_model(exported['onnx'], full_check=True)
        model = onnx.load(exported['onnx'])
        assert non_standard_ops(model) == []
        assert {(o.domain, o.version) for o in model.opset_import} == {
            ('', OPSET)}
        ops = [node.op_type for node in model.graph.node]
        # one ONNX Scan per layer carries both directions of the mixer
        assert ops.count('Scan') == layers


def test_static_export_refuses_another_size(classifier):
    runner = OnnxRunner(classifier['onnx'])
    assert runner.session.get_inputs()[0].shape[2:] == [224, 224]
    image = np.zeros((1, 3, 160, 256), np.float32)
    with pytest.raises(ValueError) as error:
        runner(image)
    assert str(error.value) == (
        f"{classifier['onnx']} was exported for 224x224 inputs, got 160x256; "
        're-export with --dynamic or --shape 160 256')


@pytest.mark.parametrize('shape', [(1, 128, 128), (2, 96, 160),
                                   (1, 256, 64)])
def test_dynamic_segmentor_matches_pytorch_at_any_size(segmentor, shape):
    batch, height, width = shape
    runner = OnnxRunner(segmentor['onnx'], num_threads=1)
    image = np.random.default_rng(height).uniform(
        0, 255, (batch, 3, height, width)).astype(np.float32)
    got = runner(image)
    want = _eager(segmentor['config'], segmentor['checkpoint'], image)
    assert got.shape == want.shape == (batch, 150, height, width)
    error = _relative_l2(got, want)
    print(f'UperNet + Vim-Ti ({SEG_DEPTH} layers) at {height}x{width}, ONNX '
          f'Runtime vs PyTorch: relative L2 {error:.2e}')
    assert error < TOLERANCE


def test_dynamic_export_says_which_sizes_it_takes(segmentor):
    runner = OnnxRunner(segmentor['onnx'])
    for height, width in ((100, 100), (32, 128)):
        with pytest.raises(ValueError) as error:
            runner(np.zeros((1, 3, height, width), np.float32))
        assert str(error.value) == (
            f"{segmentor['onnx']} (exported with --dynamic) takes heights "
            'and widths that are multiples of 32 of at least 64, got '
            f'{height}x{width}; resize or pad the image')
    with pytest.raises(ValueError, match='must be a float32 numpy array'):
        runner(np.zeros((1, 3, 64, 64), np.float64))


def test_user_errors_end_in_a_message(classifier, segmentor, tmp_path):
    out = str(tmp_path / 'x.onnx')
    missing = str(tmp_path / 'missing.pth')
    # through the real script: the message alone, exit status 1
    run = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'deployment',
                                  'pytorch2onnx.py'), CLS_CONFIG, missing,
         '--out', out], capture_output=True, text=True, cwd=ROOT,
        timeout=300)
    assert run.returncode == 1 and 'Traceback' not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f'error: checkpoint {missing} not found')
    cases = [
        ([str(tmp_path / 'missing.py'), classifier['checkpoint']],
         f"error: config {tmp_path / 'missing.py'} not found"),
        ([classifier['config'], classifier['checkpoint'], '--dynamic',
          '--shape', '100', '100'],
         'error: --dynamic traces the model at --shape, which must be '
         'multiples of 32 of at least 64; got 100 100'),
        ([classifier['config'], segmentor['checkpoint']],
         f"error: {segmentor['checkpoint']} does not fit "
         f"{classifier['config']}: "),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            pytorch2onnx.main([*argv, '--out', out])
        assert str(stop.value).startswith(message), stop.value
    assert not osp.exists(out)


def test_benchmark_times_both_runtimes(classifier, tmp_path):
    benchmark = _script('analysis_tools', 'benchmark_onnx.py')
    out = tmp_path / 'latency.json'
    result = benchmark.main([classifier['config'], classifier['checkpoint'],
                             classifier['onnx'], '--warmup', '0',
                             '--repeats', '1', '--out', str(out)])
    assert json.loads(out.read_text()) == result
    assert [row['runtime'].split()[0] for row in result['rows']] == [
        'PyTorch', 'ONNX']
    assert all(row['ms_per_image'] > 0 for row in result['rows'])
    assert result['shape'] == [224, 224] and result['threads'] == 1
    assert result['relative_l2'] < TOLERANCE
