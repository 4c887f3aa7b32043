"""get_flops.py counts Hier-Vim's scan like Vim's; benchmark_efficiency.py
times Hier-Vim-T against mmpretrain's Swin-T (tiny shapes, one thread)."""
import json
import os.path as osp

import pytest
import torch

from small_runs import ROOT, analysis_tool

CLS_CONFIG = osp.join(ROOT, 'configs', 'hier_vim',
                      'hier-vim-tiny_1xb32-200it_synthetic-in1k-64px.py')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_hier_vim_scan_flops_match_the_formula_at_odd_sizes():
    flops = analysis_tool('get_flops')
    from mmvim.models import HierVim
    model = HierVim(dict(embed_dims=16, depths=(1, 2, 1, 1))).eval()
    counted = flops.count_flops(model, (torch.randn(1, 3, 70, 50), ))
    formula, tokens = flops.hier_vim_ssm_flops_by_formula(model, (70, 50))
    assert tokens == 18 * 13  # ceil(70 / 4) x ceil(50 / 4)
    # stages of 18x13, 9x7, 5x4, 3x2 tokens; E = 2C; N = 16
    expected = sum(blocks * 2 * 4 * m * 2 * c * 16 for blocks, m, c in (
        (1, 234, 16), (2, 63, 32), (1, 20, 64), (1, 6, 128)))
    assert formula == expected
    assert counted['by_operator']['selective_scan'] == formula


def test_get_flops_on_the_hier_vim_config(tmp_path, capsys):
    flops = analysis_tool('get_flops')
    out = tmp_path / 'flops.json'
    assert flops.main([CLS_CONFIG, '--shape', '64', '--backbone-only',
                       '--out', str(out)]) == 0
    result, = json.load(open(out))
    assert result['input'] == [64, 64] and result['tokens'] == 256
    assert result['ssm_flops_counted'] == result['ssm_flops_formula'] > 0
    assert 'hier-vim-tiny_1xb32' in capsys.readouterr().out


@pytest.mark.parametrize('config,shape', [
    ('hier-vim-tiny_8xb128_in1k.py', (224, 224)),
    ('upernet_hier-vim-tiny_8xb2-160k_ade20k-512x512.py', (512, 512)),
    ('mask-rcnn_hier-vim-tiny_fpn_1x_coco.py', (800, 1333)),
])
def test_get_flops_counts_hier_vim_at_the_configs_input(config, shape):
    """Hier-Vim has no img_size: FLOPs at the crop of a segmentation
    config, the test scale of a detection config, else 224."""
    from mmengine.config import Config
    flops = analysis_tool('get_flops')
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'hier_vim', config))
    assert flops.config_input_shape(cfg) == shape


def test_benchmark_times_hier_vim_against_swin(tmp_path, capsys):
    bench = analysis_tool('benchmark_efficiency')
    for name in ('hier-vim-t', 'swin-t'):
        model = bench.build_model(name, 72, depth=1).eval()
        with torch.no_grad():
            out, = model(torch.randn(1, 3, 72, 72))
        assert out.shape == (1, 768, 3, 3)  # stride 32, padded
    assert bench.num_tokens(72, family='hier_vim') == 18 * 18
    out = str(tmp_path / 'bench.json')
    bench.main(['--device', 'cpu', '--threads', '1', '--models',
                'hier-vim-t', 'swin-t', '--resolutions', '64', '--depth',
                '1', '--necks', 'none', 'fpn', '--warmup', '0', '--repeats',
                '1', '--out', out])
    report = json.load(open(out))
    rows = report['rows']
    # hierarchical backbones run without the single-scale FPN neck
    assert {(r['model'], r['neck']) for r in rows} == {
        ('hier-vim-t', 'none'), ('swin-t', 'none')}
    assert all(r['status'] == 'ok' and r['tokens'] == 256 for r in rows)
    ratio, = report['ratios']
    assert (ratio['vim'], ratio['baseline']) == ('hier-vim-t', 'swin-t')
    assert ratio['fps_ratio'] == pytest.approx(
        rows[0]['fps'] / rows[1]['fps'])
    assert 'hier-vim-t  swin-t' in capsys.readouterr().out
