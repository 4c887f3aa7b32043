"""Benchmark the selective scan: reference, mmvim kernels, flip composition.

    python tools/analysis_tools/benchmark_scan.py [--device cpu|cuda]
        [--cases vim-ti-224 vim-s-224 vim-ti-1248] [--batch N]
        [--warmup 1] [--repeats 5] [--ref-backward] [--ref-repeats N]
        [--time-budget SECONDS] [--skip-model] [--out scan.json]

Per case (the scan shapes of one Vim mixer layer) and implementation, the
median time of the bidirectional scan forward and forward + backward:

- ``ref``: the pure-PyTorch reference, both directions in one call (its
  backward only with ``--ref-backward``: minutes on a CPU);
- ``kernel``: mmvim's fused ``bi_selective_scan`` (CPU or CUDA kernel);
- ``flip``: two single-direction kernel calls with the sequence flipped and
  flipped back, as the reference Vim code does it.

Each row also gives the bandwidth achieved against the bytes the call must
move at least (``scan_bytes``: the inputs read and the outputs written once,
the same count for every implementation, so a copy, a flip or a re-read
shows as a lower figure), and on CUDA that as a fraction of the GPU's peak
memory bandwidth (from its memory clock and bus width) where PyTorch reports
them. Then the end-to-end Vim-Ti forward at 224x224 (batch 1 and 8) with the
kernel and with the reference, per image.

First, a static table that needs no GPU (``--static-only`` prints just
that): per case, the bytes each call must move (bfloat16 and float32
data), their floor at the H100 and H200 memory bandwidths, the threads the
CUDA kernel launches (read from the SIMT emulator's launch records in a dry
run, where the emulated kernel builds), the exponentials and logarithms the
kernel computes, and their floor at Hopper's special-function throughput;
and the bytes one Vim-Ti layer keeps for backward (saved-tensor hooks).

``--time-budget`` skips a measurement that would not end in time (the
forward + backward estimated at four forwards), listing it in ``skipped``
with the reason; ``--out`` is rewritten after every case. A table goes to
stdout and everything to JSON. Timings are for reading, never asserted.
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch

from mmvim.models import Vim
from mmvim.ops import bi_selective_scan_ref
from mmvim.ops.selective_scan import select_scan_impl

# name -> (embed dims, tokens, batch): one layer's scan at that resolution
CASES = {
    'vim-ti-224': (192, 197, 128),
    'vim-s-224': (384, 197, 128),
    'vim-ti-1248': (192, 6085, 8),
}
STATE = 16  # N of every Vim layer
# a forward + backward costs about this many forwards (for the time budget)
BACKWARD_COST = 4
# bytes / s: NVIDIA's figures for the H100 SXM (HBM3) and H200 (HBM3e)
BANDWIDTH = {'H100': 3.35e12, 'H200': 4.8e12}
# exp2 / log2 results per second on either: 16 per clock per SM (CUDA C++
# programming guide, arithmetic instructions, compute capability 9.0) x
# 132 SMs x 1.98 GHz
SFU_RATE = 16 * 132 * 1.98e9


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--cases', nargs='+', default=list(CASES),
                        choices=list(CASES))
    parser.add_argument('--batch', type=int, default=None,
                        help='override the batch of every case')
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed calls before the timed ones')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--ref-backward', action='store_true',
                        help='also time the reference forward+backward '
                        '(minutes on a CPU)')
    parser.add_argument('--ref-repeats', type=int, default=None,
                        help='timed calls of the reference (default: '
                        '--repeats); it loops over the tokens in Python')
    parser.add_argument('--time-budget', type=float, default=None,
                        help='seconds for the whole run: a measurement '
                        'that would not end in time is skipped')
    parser.add_argument('--skip-model', action='store_true',
                        help='skip the end-to-end Vim-Ti forward')
    parser.add_argument('--static-only', action='store_true',
                        help='print the static table (bytes, floors, '
                        'threads, exponentials) and stop')
    parser.add_argument('--out', default='work_dirs/benchmark_scan.json')
    args = parser.parse_args(argv)
    if args.ref_repeats is None:
        args.ref_repeats = args.repeats
    if min(args.repeats, args.ref_repeats) < 1 or args.warmup < 0:
        parser.error('--repeats and --ref-repeats must be >= 1, --warmup '
                     '>= 0')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but no GPU is visible to PyTorch; use '
                     '--device cpu')
    return args


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def median_time(fn, device, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_inputs(dims, length, batch, device, requires_grad):
    inner = 2 * dims
    g = torch.Generator(device='cpu').manual_seed(0)

    def rand(*shape, scale=1.0, offset=0.0):
        x = torch.randn(*shape, generator=g) * scale + offset
        return x.to(device).requires_grad_(requires_grad)

    def direction():
        return [rand(batch, inner, length),
                rand(batch, inner, length, scale=.5, offset=-3.),
                (-torch.rand(inner, STATE, generator=g) * 8 - .1).to(
                    device).requires_grad_(requires_grad),
                rand(batch, STATE, length), rand(batch, STATE, length),
                rand(inner)]

    fwd, bwd = direction(), direction()
    extra = dict(z=rand(batch, inner, length), delta_bias=rand(inner, scale=.1),
                 delta_bias_b=rand(inner, scale=.1), delta_softplus=True)
    return fwd, bwd, extra


def flip_composition(scan, fwd, bwd, extra):
    """Two single-direction calls with flips, as the reference Vim code."""
    z = extra['z']
    y_f = scan(*fwd, z=z, delta_bias=extra['delta_bias'], delta_softplus=True)
    u, delta, A, B, C, D = bwd
    y_b = scan(u.flip(-1), delta.flip(-1), A, B.flip(-1), C.flip(-1), D,
               z=z.flip(-1), delta_bias=extra['delta_bias_b'],
               delta_softplus=True).flip(-1)
    return (y_f + y_b) / 2


def implementations(device):
    kernel_name = select_scan_impl(device)
    impls = {'ref': lambda f, b, e: bi_selective_scan_ref(*f, *b, **e)}
    if kernel_name == 'ref':
        return impls, kernel_name
    from mmvim.ops import bi_selective_scan, selective_scan
    impls['kernel'] = lambda f, b, e: bi_selective_scan(*f, *b, **e)
    impls['flip'] = lambda f, b, e: flip_composition(
        lambda *a, **k: selective_scan(*a, **k), f, b, e)
    return impls, kernel_name


def scan_bytes(dims, length, batch, itemsize=4, backward=False):
    """Bytes a bidirectional scan must move at least, each tensor once.

    Forward: u, delta (b, E, L) and B, C (b, N, L) of both directions and z
    read, the output (b, E, L) written (E = 2 * dims). ``backward=True``
    adds the backward pass: the same inputs and the output gradient read
    again, the gradients of u, delta, B, C of both directions and of z
    written. The small A, D, delta_bias and what a kernel keeps between
    the passes are left out: a lower bound.
    """
    inner = 2 * dims
    data, state = batch * inner * length, batch * STATE * length
    per_direction = 2 * data + 2 * state  # u, delta, B, C
    forward = 2 * per_direction + data + data  # + z in, out
    total = forward
    if backward:
        total += 2 * per_direction + 2 * data  # inputs, z and dout again
        total += 2 * per_direction + data  # their gradients, dz
    return itemsize * total


def transcendentals(dims, length, batch, backward=False):
    """exp / log evaluations of mmvim's bidirectional scan (no conv, as
    benchmarked here), per the kernels' code: forward, per element and
    direction, N decays exp2(delta * A) and softplus's exp and log1p, plus
    one sigmoid of z per element; the backward recomputes the decays and
    softplus per direction, adds softplus's derivative (expm1) and the
    gate's sigmoid per direction, and one sigmoid per element for dz."""
    elements = batch * 2 * dims * length
    forward = elements * (2 * (STATE + 2) + 1)
    if not backward:
        return forward
    return forward + elements * (2 * (STATE + 2 + 1 + 1) + 1)


def launch_threads(dims, length, batch):
    """(forward, backward) threads the CUDA kernel launches for a
    bidirectional scan of this shape, read from the SIMT emulator's launch
    records (a dry run computes nothing); None where the emulated kernel
    cannot be built."""
    from mmvim.ops.extension_loader import ExtensionBuildError
    from mmvim.ops.selective_scan_kernel import (bi_selective_scan_kernel,
                                                 simt_launch_records)
    inner = 2 * dims
    big = torch.zeros(1).expand(batch, inner, length)  # no memory behind it
    bc = torch.zeros(1).expand(batch, STATE, length)
    weights = [torch.zeros(inner, STATE), bc, bc, torch.zeros(inner)]
    leaf = torch.zeros(1, requires_grad=True)
    try:
        with simt_launch_records() as launches:
            out = bi_selective_scan_kernel(leaf.expand_as(big), big, *weights,
                                           big, big, *weights, z=big,
                                           delta_softplus=True, kind='simt')
            torch.autograd.grad(out, leaf, torch.zeros(1).expand(out.shape))
    except ExtensionBuildError:
        return None
    return tuple(r['grid'][0] * r['grid'][1] * r['grid'][2] * r['block'][0] *
                 r['block'][1] * r['block'][2]
                 for r in launches if 'scan_' in r['kernel'])


def saved_units_per_layer(autocast, length=197, impl='cpu'):
    """Bytes one Vim-Ti layer (D = 192, E = 384) keeps for backward, per
    batch element, in units of E x L data elements (4 bytes each in
    float32, 2 under bfloat16 autocast), on the scan implementation
    ``impl`` on the CPU: the distinct storages autograd saves
    (saved-tensor hooks), parameters left out, at batch 2 minus batch 1,
    so that weights and their autocast copies drop out."""
    from mmvim.models.layers import VimBlock
    torch.manual_seed(0)
    block = VimBlock(192)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}

    def saved(batch):
        storages = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                storages[storage.data_ptr()] = storage.nbytes()
            return t

        x = torch.randn(batch, length, 192, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast('cpu', dtype=torch.bfloat16,
                               enabled=autocast):
            block(x)
        return sum(storages.values())

    previous = os.environ.get('MMVIM_SCAN_IMPL')
    os.environ['MMVIM_SCAN_IMPL'] = impl
    try:
        per_item = saved(2) - saved(1)
    finally:
        if previous is None:
            os.environ.pop('MMVIM_SCAN_IMPL')
        else:
            os.environ['MMVIM_SCAN_IMPL'] = previous
    return per_item / (384 * length * (2 if autocast else 4))


def static_rows(cases, batch=None):
    """The device-independent figures of each case (see the docstring)."""
    rows = []
    for name in cases:
        dims, length, default_batch = CASES[name]
        b = batch or default_batch
        threads = launch_threads(dims, length, b)
        row = dict(case=name, batch=b, tokens=length, channels=2 * dims,
                   threads_forward=threads and threads[0],
                   threads_backward=threads and threads[1])
        for backward in (False, True):
            key = 'fwd_bwd' if backward else 'fwd'
            row[f'{key}_exps'] = transcendentals(dims, length, b, backward)
            row[f'{key}_sfu_floor_ms'] = row[f'{key}_exps'] / SFU_RATE * 1e3
            for dtype, size in (('bf16', 2), ('fp32', 4)):
                moved = scan_bytes(dims, length, b, size, backward)
                row[f'{key}_bytes_{dtype}'] = moved
                for gpu, rate in BANDWIDTH.items():
                    row[f'{key}_floor_ms_{dtype}_{gpu}'] = moved / rate * 1e3
        rows.append(row)
    return rows


def print_static(rows):
    print('\nstatic: bytes each call must move and their floor at peak '
          'bandwidth, threads launched, exp/log computed and their floor '
          'at the special-function rate (Hopper)')
    print(f"{'case':<13}{'pass':<8}{'MB bf16':>9}{'H100 ms':>9}"
          f"{'H200 ms':>9}{'MB fp32':>9}{'H200 ms':>9}{'threads':>10}"
          f"{'Mexp':>8}{'SFU ms':>8}")
    for r in rows:
        for key, label, threads in (('fwd', 'fwd', r['threads_forward']),
                                    ('fwd_bwd', 'fwd+bwd',
                                     r['threads_backward'])):
            print(f"{r['case']:<13}{label:<8}"
                  f"{r[f'{key}_bytes_bf16'] / 1e6:>9.1f}"
                  f"{r[f'{key}_floor_ms_bf16_H100']:>9.3f}"
                  f"{r[f'{key}_floor_ms_bf16_H200']:>9.3f}"
                  f"{r[f'{key}_bytes_fp32'] / 1e6:>9.1f}"
                  f"{r[f'{key}_floor_ms_fp32_H200']:>9.3f}"
                  f"{threads if threads else 'n/a':>10}"
                  f"{r[f'{key}_exps'] / 1e6:>8.0f}"
                  f"{r[f'{key}_sfu_floor_ms']:>8.3f}")


def peak_bandwidth(device):
    """The GPU's peak memory bandwidth in bytes / s from its memory clock
    (kHz) and bus width (bits), double data rate; None where PyTorch does
    not report them (CPUs, CUDA versions without the fields)."""
    if device != 'cuda':
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    clock_khz = getattr(props, 'memory_clock_rate', 0) or 0
    bus_bits = getattr(props, 'memory_bus_width', 0) or 0
    if clock_khz <= 0 or bus_bits <= 0:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8


class Budget:
    """Seconds left of ``--time-budget`` (None: unlimited)."""

    def __init__(self, seconds):
        self.deadline = None if seconds is None else \
            time.monotonic() + seconds

    def refuses(self, expected):
        """The reason a measurement expected to take ``expected`` seconds
        is not started, or None."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            return 'time budget used up'
        if expected > left:
            return (f'time budget: {left:.0f} s left, this needs about '
                    f'{expected:.0f} s')
        return None


def bench_case(name, impls, args, budget, skipped, peak=None):
    dims, length, batch = CASES[name]
    batch = args.batch or batch
    rows = []
    for impl, fn in impls.items():
        repeats = args.ref_repeats if impl == 'ref' else args.repeats
        calls = args.warmup + repeats
        row = dict(case=name, impl=impl, batch=batch, tokens=length,
                   channels=2 * dims, repeats=repeats,
                   forward_bytes=scan_bytes(dims, length, batch),
                   forward_backward_bytes=scan_bytes(dims, length, batch,
                                                     backward=True))
        reason = budget.refuses(0.)
        if reason:
            skipped.append(dict(case=name, impl=impl, what='forward',
                                reason=reason))
            continue
        with torch.no_grad():
            fwd, bwd, extra = make_inputs(dims, length, batch, args.device,
                                          False)
            row['forward_s'] = median_time(lambda: fn(fwd, bwd, extra),
                                           args.device, repeats, args.warmup)
        row['forward_GBps'] = row['forward_bytes'] / row['forward_s'] / 1e9
        if impl != 'ref' or args.ref_backward:
            reason = budget.refuses(BACKWARD_COST * row['forward_s'] * calls)
            if reason:
                skipped.append(dict(case=name, impl=impl,
                                    what='forward+backward', reason=reason))
            else:
                fwd, bwd, extra = make_inputs(dims, length, batch,
                                              args.device, True)
                grad = torch.ones(batch, 2 * dims, length, device=args.device)

                def step():
                    leaves = fwd + bwd + [extra['z']]
                    out = fn(fwd, bwd, extra)
                    torch.autograd.grad(out, leaves, grad)

                row['forward_backward_s'] = median_time(
                    step, args.device, repeats, args.warmup)
                row['forward_backward_GBps'] = \
                    row['forward_backward_bytes'] / \
                    row['forward_backward_s'] / 1e9
        if peak:
            for key in ('forward', 'forward_backward'):
                if f'{key}_GBps' in row:
                    row[f'{key}_fraction_of_peak'] = \
                        row[f'{key}_GBps'] * 1e9 / peak
        rows.append(row)
    return rows


def bench_model(args, budget, skipped):
    """End-to-end Vim-Ti forward at 224 per image, kernel vs reference."""
    rows = []
    model = Vim('tiny').eval().to(args.device)
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224, device=args.device)
        for impl in ('auto', 'ref'):
            reason = budget.refuses(0.)
            if reason:
                skipped.append(dict(case='vim-ti forward 224', batch=batch,
                                    impl=impl, reason=reason))
                continue
            os.environ['MMVIM_SCAN_IMPL'] = impl
            with torch.no_grad():
                seconds = median_time(lambda: model(x), args.device,
                                      max(1, min(args.repeats, 3)))
            rows.append(dict(case='vim-ti forward 224', batch=batch,
                             impl=select_scan_impl(args.device)
                             if impl == 'auto' else 'ref',
                             seconds=seconds, seconds_per_image=seconds / batch))
        os.environ.pop('MMVIM_SCAN_IMPL', None)
    return rows


def print_table(scan_rows, model_rows, kernel_name, skipped=()):
    print(f'\nselective scan, both directions (kernel: {kernel_name})')
    print(f"{'case':<13}{'impl':<8}{'batch':>6}{'forward ms':>12}"
          f"{'GB/s':>8}{'fwd+bwd ms':>12}{'GB/s':>8}")
    for r in scan_rows:
        fb = r.get('forward_backward_s')
        print(f"{r['case']:<13}{r['impl']:<8}{r['batch']:>6}"
              f"{r['forward_s'] * 1e3:>12.1f}{r['forward_GBps']:>8.2f}"
              f"{(fb * 1e3 if fb else float('nan')):>12.1f}"
              f"{r.get('forward_backward_GBps', float('nan')):>8.2f}")
    if model_rows:
        print('\nVim-Ti forward at 224x224')
        print(f"{'impl':<8}{'batch':>6}{'s / forward':>13}{'s / image':>11}")
        for r in model_rows:
            print(f"{r['impl']:<8}{r['batch']:>6}{r['seconds']:>13.3f}"
                  f"{r['seconds_per_image']:>11.3f}")
    for s in skipped:
        what = ' '.join(str(s[k]) for k in ('case', 'impl', 'what', 'batch')
                        if k in s)
        print(f"skipped {what}: {s['reason']}")


def write(result, path):
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(path + '.tmp', path)


def main(argv=None):
    args = parse_args(argv)
    budget = Budget(args.time_budget)
    impls, kernel_name = implementations(args.device)
    peak = peak_bandwidth(args.device)
    device_name = (torch.cuda.get_device_name() if args.device == 'cuda' else
                   platform.processor() or platform.machine())
    scan_rows, model_rows, skipped = [], [], []
    result = dict(device=args.device, device_name=device_name,
                  threads=torch.get_num_threads(), torch=torch.__version__,
                  kernel=kernel_name, warmup=args.warmup,
                  repeats=args.repeats, ref_repeats=args.ref_repeats,
                  peak_bandwidth_GBps=None if peak is None else peak / 1e9,
                  bytes_definition=scan_bytes.__doc__.split('\n')[0] +
                  ' (inputs read and outputs written once; a lower bound)',
                  scan=scan_rows, model=model_rows, skipped=skipped)
    static = static_rows(args.cases, args.batch)
    result['static'] = static
    print_static(static)
    result['saved_units_per_vim_ti_layer'] = saved = {
        'float32': saved_units_per_layer(False),
        'bfloat16_autocast': saved_units_per_layer(True)}
    print('\nsaved for backward per Vim-Ti layer, CPU kernel (units of '
          'E x L data elements): float32 {float32:.2f}, bfloat16 autocast '
          '{bfloat16_autocast:.2f}'.format(**saved))
    if args.static_only:
        write(result, args.out)
        print(f'\nwrote {args.out}')
        return
    for case in args.cases:
        scan_rows += bench_case(case, impls, args, budget, skipped, peak)
        write(result, args.out)  # a run stopped from outside keeps this
    if not args.skip_model:
        model_rows += bench_model(args, budget, skipped)
    print_table(scan_rows, model_rows, kernel_name, skipped)
    write(result, args.out)
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()
