import pytest
import torch

from mmvim.ops.extension_loader import compiler_available
from mmvim.ops.selective_scan_kernel import build_kernel

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
    if not compiler_available(name):
        pytest.skip(f'no compiler for the {name} build')
    build_kernel(name)
    return name, device
