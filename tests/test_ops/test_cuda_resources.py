"""The CUDA scan kernels compiled for sm_90 (H100 / H200) with ptxas's
resource report: the kernels serving N <= 16 (Vim's state size; the
token-parallel kernels take any N up to 256 at run time) must not spill
registers. Runs wherever nvcc is; no GPU needed. The report is saved to
work_dirs/ptxas_sm_90.txt."""
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from mmvim.ops.extension_loader import cuda_home

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.mark.skipif(cuda_home() is None and shutil.which('nvcc') is None,
                    reason='nvcc is not installed: nothing to compile with')
def test_sm90_kernels_for_n16_do_not_spill():
    out = osp.join(REPO, 'work_dirs', 'ptxas_sm_90.txt')
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'analysis_tools',
                                  'ptxas_report.py'), '--arch', 'sm_90',
         '--out', out, '--check-spills', '16'],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    # forward and backward for each (data, B/C) dtype pair the launchers
    # dispatch to, and the gate-gradient and conv + SiLU kernels of each
    # data type
    rows = [line.split() for line in result.stdout.splitlines()
            if line.startswith('mmvim_scan::')]
    pairs = ['float, float', 'c10::Half, c10::Half', 'c10::Half, float',
             'c10::BFloat16, c10::BFloat16', 'c10::BFloat16, float']
    for pair in pairs:
        for kind in ('fwd', 'bwd'):
            assert f'mmvim_scan::scan_{kind}_kernel<{pair}>' in \
                ' '.join(' '.join(r[:2]) for r in rows), (kind, pair)
    for data in ('float', 'c10::Half', 'c10::BFloat16'):
        for kernel in ('gate_grad_kernel', 'conv_silu_kernel'):
            assert any(r[0] == f'mmvim_scan::{kernel}<{data}>' for r in rows)
    assert len(rows) == 16, result.stdout
    for row in rows:  # name (2 words for a pair), regs, stack, spills, smem
        regs, stack, stores, loads = (int(v) for v in row[-5:-1])
        assert stores == 0 and loads == 0, row
    assert 'no spills in the 16 kernels for N <= 16' in result.stdout
    assert osp.getsize(out) > 0
