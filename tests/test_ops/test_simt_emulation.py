"""The SIMT emulation that runs the CUDA sources on the CPU
(``ops/selective_scan/csrc/simt_emulation.h``).

Probe kernels (``simt_probe/simt_probe.cu``) pin its semantics: warp
shuffles, votes, shared memory, barriers and atomics give what CUDA
documents (on a GPU machine the same probes run on the device too), and
each broken rule (a collective some lanes skip, lanes at different
collectives, a deadlock, a shuffle outside its mask, a bad launch) stops
the launch with an error naming it. An AddressSanitizer build of the
emulated scan kernel runs the scan without a report, and reports a probe's
read past the end of a tensor.
"""
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch

from mmvim.ops.extension_loader import build_extension
from compilers import require_compiler

PROBE_DIR = osp.join(osp.dirname(osp.abspath(__file__)), 'simt_probe')
KINDS = ['simt'] + (['cuda'] if torch.cuda.is_available() else [])


def _probe(kind):
    require_compiler(kind)
    return build_extension('simt_probe', ['simt_probe.cu'], kind=kind,
                           csrc=PROBE_DIR)


@pytest.fixture(scope='module')
def probe():
    return _probe('simt')


def _device(kind):
    return 'cuda' if kind == 'cuda' else 'cpu'


@pytest.mark.parametrize('kind', KINDS)
def test_warp_shuffles_and_votes(kind):
    probe = _probe(kind)
    values = torch.randint(-50, 50, (128, ),
                           generator=torch.Generator().manual_seed(0),
                           dtype=torch.int32)
    out = probe.warp_ops(values.to(_device(kind))).cpu()
    warps = values.view(-1, 32)
    lane = torch.arange(32)
    expected = torch.stack([
        warps.sum(1, keepdim=True).expand(-1, 32),
        warps.cumsum(1),
        torch.cat([warps[:, 1:], warps[:, 31:]], 1),  # lane 31 keeps its own
        warps[:, 7:8].expand(-1, 32),
        torch.full_like(warps, 0xAAAAAAAA - (1 << 32)),  # odd lanes, as int32
        torch.ones_like(warps),
        torch.ones_like(warps),
        warps[:, lane ^ 4],
    ], dim=-1).reshape(-1, 8).to(torch.int32)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize('kind', KINDS)
def test_shared_memory_barriers_and_atomics(kind):
    probe = _probe(kind)
    x = torch.randn(5 * 256, generator=torch.Generator().manual_seed(1))
    sums, total, counts = probe.block_sums(x.to(_device(kind)), 256, 256 * 4)
    blocks = x.view(5, 256).double()
    torch.testing.assert_close(sums.cpu().double()[:, 0], blocks.sum(1),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sums.cpu().double()[:, 1], 2 * blocks.sum(1),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(total.cpu().double(), blocks.sum().view(1),
                               rtol=1e-5, atol=1e-4)
    assert counts.cpu().tolist() == (blocks > 0).sum(1).tolist()


def test_dynamic_shared_memory_limit_and_opt_in(probe):
    x = torch.randn(256)
    with pytest.raises(RuntimeError, match=r'65536 bytes of dynamic shared '
                       r'memory \(limit 49152'):
        probe.block_sums(x, 256, 65536)
    probe.allow_dynamic_smem(65536)
    sums, _, _ = probe.block_sums(x, 256, 65536)
    assert sums[0, 0].item() == pytest.approx(x.sum().item(), abs=1e-4)


@pytest.mark.parametrize('name,message', [
    ('lanes_skip_shuffle',
     r'lane 1\d of warp 0 .* returned from the kernel while lanes of mask '
     r'0xffffffff wait at __shfl_xor_sync at .*simt_probe\.cu:\d+'),
    ('lanes_at_different_shuffles',
     r'__shfl_xor_sync at .*simt_probe\.cu:\d+, lane 1 .* lane 0 waits at '
     r'__shfl_xor_sync at .*simt_probe\.cu:\d+: the lanes of a mask must '
     r'reach the same collective'),
    ('threads_skip_syncthreads',
     r'thread \(32,0,0\) of block \(0,0,0\) returned from the kernel while '
     r'other threads wait at __syncthreads at .*simt_probe\.cu:\d+'),
    ('deadlock',
     r'deadlock in block \(0,0,0\):\n.*waits at __syncthreads at .*\n'
     r'(.*\n)*.*thread \(3,0,0\).* waits at __shfl_sync'),
    ('shuffle_outside_mask',
     r'__shfl_sync at .*simt_probe\.cu:\d+, lane \d+ of warp 0 .*: reads lane '
     r'20, which is not in the mask 0xffff'),
    ('too_many_threads',
     r'invalid configuration argument launching .*lanes_skip_shuffle.*: '
     r'block \(2048,1,1\)'),
])
def test_broken_rules_stop_the_launch(probe, name, message):
    with pytest.raises(RuntimeError, match=message):
        probe.rule_breaker(name, torch.zeros(64, dtype=torch.int32))
    # the emulator is usable again after the failed launch
    values = torch.arange(64, dtype=torch.int32)
    assert probe.warp_ops(values)[:, 0].tolist() == \
        [sum(range(32))] * 32 + [sum(range(32, 64))] * 32


def test_launches_are_recorded_with_their_geometry(probe):
    probe.launches()
    probe.warp_ops(torch.zeros(192, dtype=torch.int32))
    probe.block_sums(torch.zeros(512), 128, 512)
    launches = probe.launches()
    assert len(launches) == 2
    assert 'warp_ops' in launches[0] and launches[0].endswith(' 3x64 smem 0')
    assert 'block_sums' in launches[1] and \
        launches[1].endswith(' 4x128 smem 512')


def _asan_runtime():
    cxx = os.environ.get('CXX', 'c++')
    try:
        path = subprocess.run([cxx, '-print-file-name=libasan.so'],
                              capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return path if osp.isabs(path) and osp.exists(path) else None


ASAN_SCRIPT = """
    import torch
    from mmvim.ops import bi_selective_scan_ref, selective_scan_ref
    from mmvim.ops.extension_loader import build_extension
    from mmvim.ops.selective_scan_kernel import (bi_selective_scan_kernel,
                                                 selective_scan_kernel)

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    g = torch.Generator().manual_seed(0)
    for dtype, (batch, dim, state, length, groups) in [
            (torch.float32, (2, 40, 16, 33, 2)), (torch.bfloat16, (1, 24, 5, 1, 1)),
            (torch.float16, (1, 136, 24, 9, 4))]:
        bc = (batch, groups, state, length)
        xs = [torch.randn(batch, dim, length, generator=g).to(dtype),
              (torch.randn(batch, dim, length, generator=g) - 1).to(dtype),
              -torch.rand(dim, state, generator=g) - .1,
              torch.randn(*bc, generator=g), torch.randn(*bc, generator=g),
              torch.randn(dim, generator=g)]
        xs_b = [x.clone() for x in xs]
        z = torch.randn(batch, dim, length, generator=g).to(dtype)
        leaves = [x.requires_grad_(True) for x in xs + xs_b + [z]]
        out = bi_selective_scan_kernel(*leaves[:12], z=leaves[12],
                                       delta_softplus=True, kind='simt')
        out.float().sum().backward()
        ref = bi_selective_scan_ref(*[x.detach().double() for x in leaves[:12]],
                                    z=z.detach().double(), delta_softplus=True)
        assert rel(out.detach(), ref) < 1e-2, rel(out.detach(), ref)
        y, last = selective_scan_kernel(*leaves[:6], z=leaves[12],
                                        delta_softplus=True, reverse=True,
                                        return_last_state=True, kind='simt')
        y.float().sum().backward()
    print('scan ran clean under AddressSanitizer')
    probe = build_extension('simt_probe', ['simt_probe.cu'], kind='simt',
                            csrc={probe_dir!r})
    probe.read_past_end(torch.zeros(16))
    print('the read past the end went unnoticed')
"""


def test_address_sanitizer_build(tmp_path):
    runtime = _asan_runtime()
    if runtime is None:
        pytest.skip('the C++ compiler has no AddressSanitizer runtime')
    env = dict(os.environ, MMVIM_SIMT_SANITIZE='address', LD_PRELOAD=runtime,
               ASAN_OPTIONS='detect_leaks=0:alloc_dealloc_mismatch=0:'
               'detect_stack_use_after_return=0',
               MMVIM_SCAN_POISON='1')
    result = subprocess.run(
        [sys.executable, '-c',
         textwrap.dedent(ASAN_SCRIPT).replace('{probe_dir!r}',
                                              repr(PROBE_DIR))],
        capture_output=True, text=True, env=env, timeout=1200)
    assert 'scan ran clean under AddressSanitizer' in result.stdout, \
        result.stderr[-4000:]
    assert 'the read past the end went unnoticed' not in result.stdout
    assert result.returncode != 0
    assert 'ERROR: AddressSanitizer: heap-buffer-overflow' in result.stderr, \
        result.stderr[-4000:]
    assert 'read_past_end' in result.stderr
