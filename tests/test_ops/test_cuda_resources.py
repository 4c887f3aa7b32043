"""The CUDA scan kernels compiled for sm_90 (H100 / H200) with ptxas's
resource report: the kernels for N <= 16 (Vim's state size) must not spill
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
    # forward and backward for each of the three data types
    rows = [line for line in result.stdout.splitlines()
            if 'scan_' in line and '_kernel<' in line]
    n16 = [line for line in rows if ', 16>' in line]
    assert len(n16) == 6, result.stdout
    assert 'no spills in the 6 kernels for N <= 16' in result.stdout
    assert osp.getsize(out) > 0
