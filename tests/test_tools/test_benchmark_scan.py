"""tools/analysis_tools/benchmark_scan.py: the byte count behind its
bandwidth figures, the time budget, and a tiny CPU run. Timings are never
asserted."""
import json
import os.path as osp

import pytest
import torch

from mmvim.ops.extension_loader import compiler_available
from small_runs import analysis_tool

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.fixture(scope='module')
def scan_bench():
    return analysis_tool('benchmark_scan')


def test_scan_bytes_count_each_tensor_once(scan_bench):
    dims, length, batch = 192, 197, 2
    E, N = 2 * dims, 16
    data, state = batch * E * length, batch * N * length
    # forward: u, delta, B, C of two directions and z in, the output out
    forward = 2 * (2 * data + 2 * state) + data + data
    assert scan_bench.scan_bytes(dims, length, batch) == 4 * forward
    assert scan_bench.scan_bytes(dims, length, batch, itemsize=2) == \
        2 * forward
    # backward: those inputs and dout again, their gradients and dz out
    backward = 2 * (2 * data + 2 * state) + 2 * data + \
        2 * (2 * data + 2 * state) + data
    assert scan_bench.scan_bytes(dims, length, batch, backward=True) == \
        4 * (forward + backward)


def test_budget_says_why(scan_bench, monkeypatch):
    assert scan_bench.Budget(None).refuses(1e9) is None
    clock = [100.]
    monkeypatch.setattr(scan_bench.time, 'monotonic', lambda: clock[0])
    budget = scan_bench.Budget(10.)
    assert budget.refuses(5.) is None
    assert budget.refuses(20.) == ('time budget: 10 s left, this needs '
                                   'about 20 s')
    clock[0] = 111.
    assert budget.refuses(0.) == 'time budget used up'


def test_tiny_cpu_run(scan_bench, tmp_path, capsys):
    out = tmp_path / 'scan.json'
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scan_bench.main(['--device', 'cpu', '--batch', '1', '--cases',
                         'vim-ti-224', '--skip-model', '--repeats', '1',
                         '--warmup', '0', '--out', str(out)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert 'GB/s' in printed and 'wrote' in printed
    report = json.loads(out.read_text())
    assert report['device'] == 'cpu' and report['peak_bandwidth_GBps'] is None
    assert report['skipped'] == [] and report['model'] == []
    rows = {r['impl']: r for r in report['scan']}
    # the kernel rows wherever the CPU kernel can be built (a failed build
    # must not pass as the reference-only case)
    assert set(rows) == ({'ref', 'kernel', 'flip'}
                         if compiler_available('cpu') else {'ref'})
    for impl, row in rows.items():
        assert row['forward_bytes'] == scan_bench.scan_bytes(192, 197, 1)
        assert row['forward_GBps'] == pytest.approx(
            row['forward_bytes'] / row['forward_s'] / 1e9)
        # the reference's backward only with --ref-backward
        assert ('forward_backward_s' in row) == (impl != 'ref')


@pytest.mark.parametrize('autocast', [False, True], ids=['fp32', 'bf16'])
def test_a_vim_layer_saves_at_most_5_units(scan_bench, autocast):
    """One Vim-Ti layer on the CPU kernel keeps at most 5 units of
    b * E * L data elements for backward (float32, and bfloat16 autocast),
    as the benchmark prints it; the readable path with the reference scan
    keeps its (b, E, L, N) tensors, and the measurement sees them."""
    from mmvim.ops.extension_loader import compiler_available
    if not compiler_available('cpu'):
        pytest.skip('no C++ compiler')
    units = scan_bench.saved_units_per_layer(autocast)
    print(f'saved per layer: {units:.2f} units',
          'bf16 autocast' if autocast else 'fp32')
    assert units <= 5.0, units
    assert scan_bench.saved_units_per_layer(autocast, impl='ref') > 40
