import pytest
import torch

from mmvim.ops.selective_scan_kernel import build_kernel
from compilers import require_compiler

# (kind, device) of every compiled scan kernel this machine runs: the CPU
# kernel, and the CUDA kernel (on the GPU, or under the SIMT emulation on
# the CPU without one)
SCAN_KINDS = [('cpu', 'cpu'),
              ('cuda', 'cuda') if torch.cuda.is_available() else
              ('simt', 'cpu')]


@pytest.fixture(params=SCAN_KINDS, ids=[k for k, _ in SCAN_KINDS])
def scan_kind(request):
    """(kind, device) of each compiled kernel, built; skipped only where
    no compiler for it exists (a failed build fails the test)."""
    name, device = request.param
    require_compiler(name)
    build_kernel(name)
    return name, device
