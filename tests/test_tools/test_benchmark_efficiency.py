"""tools/analysis_tools/benchmark_efficiency.py and get_flops.py: a CPU
smoke run of the benchmark, the eager / SDPA attention switch, OOM handling
and the selective-scan FLOP count against the paper's formula. Timings are
never asserted."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys
import time

import pytest
import torch

from small_runs import analysis_tool

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools', 'analysis_tools')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny models on a busy 2-core machine: a second OpenMP thread only
    waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def bench():
    return analysis_tool('benchmark_efficiency')


@pytest.fixture(scope='module')
def flops():
    return analysis_tool('get_flops')


def test_cpu_smoke_run_writes_table_json_and_png(bench, tmp_path, capsys):
    out = tmp_path / 'eff.json'
    result = subprocess.run(
        [sys.executable, osp.join(TOOLS, 'benchmark_efficiency.py'),
         '--device', 'cpu', '--threads', '1', '--models', 'vim-ti',
         'deit-ti-eager',
         '--resolutions', '32', '--depth', '1', '--warmup', '0',
         '--repeats', '1', '--necks', 'none', 'fpn', '--modes', 'inference',
         'train', '--scan-impl', 'auto', '--out', str(out)],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'images/s' in result.stdout and 'against the baselines: Vim vs ' \
        'DeiT' in result.stdout

    report = json.loads(out.read_text())
    for key in ('device', 'device_name', 'torch', 'scan_impl', 'batch',
                'memory_definition', 'time_definition', 'rows', 'ratios',
                'targets'):
        assert key in report
    assert report['device'] == 'cpu' and report['depth_override'] == 1
    assert report['threads'] == 1
    # the compiled CPU kernel wherever a compiler exists (CI has one)
    from mmvim.ops.extension_loader import compiler_available
    assert report['scan_impl'] == ('cpu' if compiler_available('cpu')
                                   else 'ref')
    rows = report['rows']
    # 2 models x 2 necks x 2 modes x 1 resolution x float32
    assert len(rows) == 8
    assert {(r['model'], r['neck'], r['mode']) for r in rows} == {
        (m, n, mode) for m in ('vim-ti', 'deit-ti-eager')
        for n in ('none', 'fpn') for mode in ('inference', 'train')}
    for row in rows:
        assert row['status'] == 'ok'
        assert row['resolution'] == 32 and row['tokens'] == 5
        assert row['fps'] > 0 and len(row['times']) == 1
        # the parameters alone are above 0.1 MiB
        assert row['memory_mib'] is not None and row['memory_mib'] > 0.1
        assert (row['scan_impl'] is None) == (row['family'] == 'deit')
        assert (row['attention'] == 'eager') == (row['family'] == 'deit')
    assert len(report['ratios']) == 4
    assert all(r['fps_ratio'] > 0 and r['memory_fraction'] > 0
               for r in report['ratios'])
    assert report['targets'] == []  # no 1248x1248 row

    png = tmp_path / 'eff.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    # the report and the plot again from the JSON, nothing measured
    replotted = tmp_path / 'again.png'
    bench.main(['--replot', str(out), '--plot', str(replotted)])
    assert 'against the baselines: Vim vs DeiT' in capsys.readouterr().out
    assert replotted.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_eager_attention_matches_sdpa(bench):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(
        bench.eager_attention(q, k, v),
        torch.nn.functional.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(
        bench.eager_attention(q, k, v, scale=0.3),
        torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=.3))


def test_attention_switch_gives_the_same_deit(bench):
    model = bench.build_model('deit-ti-sdpa', 48, 'fpn', depth=2)
    model.eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        sdpa = model(x)
        assert bench.set_attention(model, 'eager') == 2
        eager = model(x)
    attentions = [m for m in model.modules()
                  if hasattr(m, 'scaled_dot_product_attention')]
    assert attentions and all(m.scaled_dot_product_attention is
                              bench.eager_attention for m in attentions)
    assert len(eager) == 5
    for a, b in zip(eager, sdpa):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='choose from eager, sdpa'):
        bench.set_attention(model, 'flash')


def test_both_families_see_the_same_patch_grid(bench):
    # 738 is not a multiple of 16: DeiT must not pad to a 47x47 grid
    for name in ('vim-ti', 'deit-ti-eager'):
        model = bench.build_model(name, 738, 'none', depth=1)
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 738, 738))
        assert out[-1].shape == (1, 192, 46, 46)
    assert bench.num_tokens(738) == 46 * 46 + 1
    assert bench.num_tokens(1248) == 6084 + 1


def test_growth_stops_per_model_at_out_of_memory(bench, monkeypatch):
    args = bench.parse_args(['--device', 'cpu', '--resolutions', '32', '48',
                             '--grow-step', '16', '--max-resolution', '96',
                             '--depth', '1', '--models', 'vim-ti',
                             'deit-ti-eager'])

    def measure(model, x, mode, dtype, args):
        is_deit = model.backbone.__class__.__name__ == 'VisionTransformer'
        if is_deit and x.shape[-1] >= 64:
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried...')
        return 0.5, [0.5], 1.0

    monkeypatch.setattr(bench, 'measure', measure)
    rows = bench.run_grid('none', 'float32', 'inference', args, 'cpu')
    assert [(r['model'], r['resolution'], r['status']) for r in rows] == [
        ('vim-ti', 32, 'ok'), ('deit-ti-eager', 32, 'ok'),
        ('vim-ti', 48, 'ok'), ('deit-ti-eager', 48, 'ok'),
        ('vim-ti', 64, 'ok'), ('deit-ti-eager', 64, 'oom'),
        ('vim-ti', 80, 'ok'), ('vim-ti', 96, 'ok')]
    assert rows[0]['fps'] == 2.0  # batch 1 / 0.5 s
    ratios = bench.compare(rows)
    assert [(r['resolution'], r['baseline_status']) for r in ratios] == [
        (32, 'ok'), (48, 'ok'), (64, 'oom')]
    # any other error is not swallowed
    monkeypatch.setattr(bench, 'measure', lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        bench.run_grid('none', 'float32', 'inference', args, 'cpu')


def test_scan_flops_match_the_paper_formula(flops, monkeypatch):
    from mmengine.analysis import FlopAnalyzer

    from mmvim.models.layers import BiMambaMixer
    batch, tokens, dims, state = 2, 37, 32, 16
    mixer = BiMambaMixer(dims, d_state=state)
    x = torch.randn(batch, tokens, dims)
    counted = flops.count_flops(mixer, (x, ))
    # the paper: 3M(2D)N + M(2D)N per direction, two directions
    per_direction = 3 * tokens * (2 * dims) * state + \
        tokens * (2 * dims) * state
    assert counted['by_operator']['selective_scan'] == \
        2 * batch * per_direction
    assert flops.ssm_flops(tokens, 2 * dims, state) == per_direction
    assert not any('SelectiveScan' in op for op in counted['uncounted'])
    # the linear layers are still counted (in_proj, x_proj, dt_proj, out)
    assert counted['by_operator']['linear'] > 0
    # an uninstructed counter, on the same readable path, sees no scan
    monkeypatch.setenv('MMVIM_SCAN_IMPL', 'ref')
    plain = FlopAnalyzer(mixer, (x, ))
    plain.unsupported_ops_warnings(False)
    plain.uncalled_modules_warnings(False)
    assert 'selective_scan' not in plain.by_operator()
    assert plain.total() == counted['flops'] - 2 * batch * per_direction


def test_vim_scan_total_matches_formula(flops):
    from mmvim.models import Vim
    model = Vim(dict(embed_dims=64, depth=3), img_size=64)
    model.eval()
    counted = flops.count_flops(model, (torch.randn(1, 3, 64, 96), ))
    formula, tokens = flops.vim_ssm_flops_by_formula(model, (64, 96))
    assert tokens == 4 * 6 + 1
    assert formula == 3 * 2 * 4 * tokens * 128 * 16
    assert counted['by_operator']['selective_scan'] == formula
    assert counted['params'] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('bidirectional,cls_token_position,directions,cls',
                         [('none', 'middle', 1, 1), ('layers', None, 1, 0),
                          ('ssm', 'double', 2, 2), ('ssm_conv', 'head', 2, 1)])
def test_ablation_scans_are_counted(flops, bidirectional, cls_token_position,
                                    directions, cls):
    """Table 4 / 5 variants: the unidirectional mixers ('none', 'layers')
    scan one direction, bimamba v1 ('ssm') two over a shared conv; the
    class tokens add to the scanned sequence."""
    from mmvim.models import Vim
    model = Vim(dict(embed_dims=32, depth=2), img_size=64,
                bidirectional=bidirectional,
                cls_token_position=cls_token_position,
                out_type='featmap').eval()
    counted = flops.count_flops(model, (torch.randn(1, 3, 64, 96), ))
    formula, tokens = flops.vim_ssm_flops_by_formula(model, (64, 96))
    assert tokens == 4 * 6 + cls
    assert formula == 2 * directions * 4 * tokens * 64 * 16
    assert counted['by_operator']['selective_scan'] == formula
    assert not any('SelectiveScan' in op for op in counted['uncounted'])


def test_get_flops_on_a_config(flops, capsys, tmp_path):
    config = osp.join(ROOT, 'configs', 'vim',
                      'vim-tiny-p16_1xb32-200it_synthetic-in1k-64px.py')
    out = tmp_path / 'flops.json'
    assert flops.main([config, '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'vim-tiny-p16_1xb32-200it_synthetic-in1k-64px.py' in printed
    result, = json.loads(out.read_text())
    assert result['input'] == [64, 64] and result['tokens'] == 17
    assert result['ssm_flops_counted'] == result['ssm_flops_formula'] > 0
    # the classifier = backbone + a 6-way linear head on the class token
    assert result['model']['params'] == \
        result['backbone']['params'] + 192 * 6 + 6
    assert result['model']['flops'] >= result['backbone']['flops']


def test_paper_targets_at_1248(bench):
    def row(model, fps, memory, status='ok'):
        return dict(model=model, neck='none', dtype='bfloat16',
                    mode='inference', resolution=1248, status=status,
                    fps=fps, memory_mib=memory)

    rows = [row('vim-ti', 28., 100.), row('deit-ti-eager', 10., 1000.),
            row('deit-ti-sdpa', 35., 150.)]
    targets = {t['baseline']: t for t in
               bench.check_targets(bench.compare(rows), 'a GPU')}
    eager, sdpa = targets['deit-ti-eager'], targets['deit-ti-sdpa']
    assert eager['fps_ratio'] == pytest.approx(2.8) and eager['fps_met']
    assert eager['memory_fraction'] == pytest.approx(.1)
    assert eager['memory_met']
    # against SDPA only the memory is a target; the speed is reported
    assert sdpa['memory_met'] and 'fps_met' not in sdpa
    assert sdpa['fps_ratio'] == pytest.approx(.8)
    rows[0]['memory_mib'] = 140.  # 14% of eager DeiT: misses 13.2%
    eager = bench.check_targets(bench.compare(rows), 'a GPU')[0]
    assert eager['baseline'] == 'deit-ti-eager' and not eager['memory_met']


# ---- DeiT from timm (the GPU machine has timm, not mmpretrain) ----------

def test_timm_deit_has_mmpretrains_parameters(bench):
    # timm and mmpretrain are pinned in the environment: no skip
    for name, params in (('deit-ti-eager', 5_524_416),
                         ('deit-s-sdpa', None)):
        counts = {}
        for impl in ('timm', 'mmpretrain'):
            model = bench.build_model(name, 224, 'none', deit_impl=impl)
            counts[impl] = sum(p.numel() for p in model.parameters())
        assert counts['timm'] == counts['mmpretrain'], (name, counts)
        if params is not None:  # DeiT-Ti at 224: 5.52 M without a head
            assert counts['timm'] == params
    # built for 738 (not a multiple of 16): the same 46x46 grid, the same
    # position embedding, the same pyramid
    outs, counts = {}, {}
    for impl in ('timm', 'mmpretrain'):
        model = bench.build_model('deit-ti-eager', 738, 'fpn', depth=1,
                                  deit_impl=impl).eval()
        counts[impl] = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            outs[impl] = model(torch.randn(1, 3, 738, 738))
    assert counts['timm'] == counts['mmpretrain']
    assert [o.shape for o in outs['timm']] == \
        [o.shape for o in outs['mmpretrain']]
    assert outs['timm'][2].shape == (1, 256, 46, 46)  # the stride-16 level


def test_timm_attention_switch_gives_the_same_deit(bench):
    model = bench.build_model('deit-ti-sdpa', 48, 'none', depth=2,
                              deit_impl='timm').eval()
    switches = [m for m in model.modules() if hasattr(m, 'fused_attn')]
    assert len(switches) == 2 and all(m.fused_attn for m in switches)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        sdpa, = model(x)
        assert bench.set_timm_attention(model, 'eager') == 2
        assert not any(m.fused_attn for m in switches)
        eager, = model(x)
    assert sdpa.shape == (2, 192, 3, 3)
    torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-5)
    eager_model = bench.build_model('deit-ti-eager', 48, depth=1,
                                    deit_impl='timm')
    assert not any(m.fused_attn for m in eager_model.modules()
                   if hasattr(m, 'fused_attn'))
    with pytest.raises(ValueError, match='choose from eager, sdpa'):
        bench.set_timm_attention(model, 'flash')


def test_deit_impl_option_and_rows(bench, monkeypatch):
    args = bench.parse_args(['--device', 'cpu', '--resolutions', '32',
                             '--depth', '1', '--models', 'vim-ti',
                             'deit-ti-sdpa', '--deit-impl', 'timm',
                             '--scan-impl', 'simt'])
    assert args.deit_impl == 'timm' and args.scan_impl == 'simt'
    assert bench.resolve_deit_impl('timm') == 'timm'
    expected_auto = 'mmpretrain' if importlib.util.find_spec(
        'mmpretrain') else 'timm'
    assert bench.resolve_deit_impl('auto') == expected_auto
    with pytest.raises(ValueError, match='choose from auto, mmpretrain'):
        bench.resolve_deit_impl('torchvision')
    monkeypatch.setattr(bench, 'measure',
                        lambda model, x, mode, dtype, args: (.5, [.5], 1.))
    rows = bench.run_grid('none', 'float32', 'inference', args, 'cpu')
    assert [(r['model'], r['deit_impl'], r['scan_impl']) for r in rows] == \
        [('vim-ti', None, 'cpu'), ('deit-ti-sdpa', 'timm', None)]
    assert all(r['wall_seconds'] >= 0 for r in rows)


def test_time_budget_skips_rows_with_the_reason(bench, monkeypatch):
    args = bench.parse_args(['--device', 'cpu', '--resolutions', '32', '48',
                             '64', '--depth', '1', '--models', 'vim-ti',
                             'deit-ti-eager', '--time-budget', '60'])
    assert args.time_budget == 60.
    with pytest.raises(SystemExit):
        bench.parse_args(['--device', 'cpu', '--time-budget', '0'])
    measured = []

    def measure(model, x, mode, dtype, args):
        measured.append(x.shape[-1])
        return .5, [.5], 1.

    monkeypatch.setattr(bench, 'measure', measure)
    # no time left: nothing runs, every listed row is there, skipped
    rows = bench.run_grid('none', 'float32', 'inference', args, 'cpu',
                          deadline=time.monotonic() - 1)
    assert measured == []
    assert [(r['model'], r['resolution'], r['status']) for r in rows] == [
        (m, res, 'skipped') for res in (32, 48, 64)
        for m in ('vim-ti', 'deit-ti-eager')]
    assert all(r['reason'] == 'time budget used up' for r in rows)
    # 30 s left, but an earlier row (another grid's) says DeiT at 16 px
    # took 10 s: at 32 px, 2.5x the tokens, squared, about 62 s. Vim runs,
    # DeiT's row and the rest of the grid are skipped
    history = [dict(model='deit-ti-eager', mode='inference', status='ok',
                    tokens=2, wall_seconds=10.)]
    seen = []
    rows = bench.run_grid('none', 'float32', 'inference', args, 'cpu',
                          deadline=time.monotonic() + 30, history=history,
                          on_row=seen.append)
    assert [(r['model'], r['resolution'], r['status']) for r in rows] == [
        ('vim-ti', 32, 'ok'), ('deit-ti-eager', 32, 'skipped'),
        ('vim-ti', 48, 'skipped'), ('deit-ti-eager', 48, 'skipped'),
        ('vim-ti', 64, 'skipped'), ('deit-ti-eager', 64, 'skipped')]
    skipped = rows[1:]
    assert all(r['reason'] == 'time budget: 30 s left, this row needs '
               'about 62 s' for r in skipped)
    assert seen == rows[:1]
    # the report and the comparison take skipped rows
    ratios = bench.compare(rows)
    assert any(e['baseline_status'] == 'skipped' for e in ratios)
    assert 'skipped' in bench.format_row(skipped[0])


def test_partial_json_is_written_after_every_row(bench, tmp_path,
                                                 monkeypatch):
    out = tmp_path / 'eff.json'
    sizes = []

    def measure(model, x, mode, dtype, args):
        # the file holds every row measured before this one
        if out.exists():
            sizes.append(len(json.loads(out.read_text())['rows']))
        return .5, [.5], 1.

    monkeypatch.setattr(bench, 'measure', measure)
    monkeypatch.setattr(bench, 'plot', lambda rows, info, path: None)
    bench.main(['--device', 'cpu', '--threads', '1', '--resolutions', '32',
                '48', '--depth', '1', '--models', 'vim-ti', '--necks', 'none',
                '--out', str(out)])
    assert sizes == [1]
    report = json.loads(out.read_text())
    assert [r['resolution'] for r in report['rows']] == [32, 48]
    assert report['deit_impl'] is None  # no DeiT in this run
