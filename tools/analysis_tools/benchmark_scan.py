"""Benchmark the selective scan: reference, mmvim kernels, flip composition.

    python tools/analysis_tools/benchmark_scan.py [--device cpu|cuda]
        [--cases vim-ti-224 vim-s-224 vim-ti-1248] [--out scan.json]

Per case (the scan shapes of one Vim mixer layer) and implementation, the
median time of the bidirectional scan forward and forward + backward:

- ``ref``: the pure-PyTorch reference, both directions in one call;
- ``kernel``: mmvim's fused ``bi_selective_scan`` (CPU or CUDA kernel);
- ``flip``: two single-direction kernel calls with the sequence flipped and
  flipped back, as the reference Vim code does it.

On CUDA it also reports the bandwidth achieved against the bytes the fused
forward must move. Then the end-to-end Vim-Ti forward at 224x224 (batch 1
and 8) with the kernel and with the reference, per image. A table goes to
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


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--cases', nargs='+', default=list(CASES),
                        choices=list(CASES))
    parser.add_argument('--batch', type=int, default=None,
                        help='override the batch of every case')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--ref-backward', action='store_true',
                        help='also time the reference forward+backward '
                        '(minutes on a CPU)')
    parser.add_argument('--skip-model', action='store_true',
                        help='skip the end-to-end Vim-Ti forward')
    parser.add_argument('--out', default='work_dirs/benchmark_scan.json')
    return parser.parse_args()


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
    inner, state = 2 * dims, 16
    g = torch.Generator(device='cpu').manual_seed(0)

    def rand(*shape, scale=1.0, offset=0.0):
        x = torch.randn(*shape, generator=g) * scale + offset
        return x.to(device).requires_grad_(requires_grad)

    def direction():
        return [rand(batch, inner, length),
                rand(batch, inner, length, scale=.5, offset=-3.),
                (-torch.rand(inner, state, generator=g) * 8 - .1).to(
                    device).requires_grad_(requires_grad),
                rand(batch, state, length), rand(batch, state, length),
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


def scan_bytes(dims, length, batch, itemsize=4):
    """Bytes the fused forward must read and write: u, delta, z, B, C of
    both directions in, out back."""
    inner, state = 2 * dims, 16
    per_dir = 2 * batch * inner * length + 2 * batch * state * length
    return itemsize * (2 * per_dir + 2 * batch * inner * length)


def bench_case(name, impls, args):
    dims, length, batch = CASES[name]
    batch = args.batch or batch
    rows = []
    for impl, fn in impls.items():
        row = dict(case=name, impl=impl, batch=batch, tokens=length,
                   channels=2 * dims)
        with torch.no_grad():
            fwd, bwd, extra = make_inputs(dims, length, batch, args.device,
                                          False)
            row['forward_s'] = median_time(lambda: fn(fwd, bwd, extra),
                                           args.device, args.repeats)
        if impl != 'ref' or args.ref_backward:
            fwd, bwd, extra = make_inputs(dims, length, batch, args.device,
                                          True)
            grad = torch.ones(batch, 2 * dims, length, device=args.device)

            def step():
                leaves = fwd + bwd + [extra['z']]
                out = fn(fwd, bwd, extra)
                torch.autograd.grad(out, leaves, grad)

            row['forward_backward_s'] = median_time(step, args.device,
                                                    args.repeats)
        if args.device == 'cuda' and impl == 'kernel':
            row['forward_GBps'] = scan_bytes(dims, length, batch) / \
                row['forward_s'] / 1e9
        rows.append(row)
    return rows


def bench_model(args):
    """End-to-end Vim-Ti forward at 224 per image, kernel vs reference."""
    rows = []
    model = Vim('tiny').eval().to(args.device)
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224, device=args.device)
        for impl in ('auto', 'ref'):
            os.environ['MMVIM_SCAN_IMPL'] = impl
            with torch.no_grad():
                seconds = median_time(lambda: model(x), args.device,
                                      max(1, min(args.repeats, 3)))
            rows.append(dict(case='vim-ti forward 224', batch=batch,
                             impl=select_scan_impl(args.device)
                             if impl == 'auto' else 'ref',
                             seconds=seconds, seconds_per_image=seconds / batch))
        os.environ.pop('MMVIM_SCAN_IMPL')
    return rows


def print_table(scan_rows, model_rows, kernel_name):
    print(f'\nselective scan, both directions (kernel: {kernel_name})')
    print(f"{'case':<13}{'impl':<8}{'batch':>6}{'forward ms':>12}"
          f"{'fwd+bwd ms':>12}{'GB/s':>8}")
    for r in scan_rows:
        fb = r.get('forward_backward_s')
        bw = r.get('forward_GBps')
        print(f"{r['case']:<13}{r['impl']:<8}{r['batch']:>6}"
              f"{r['forward_s'] * 1e3:>12.1f}"
              f"{(fb * 1e3 if fb else float('nan')):>12.1f}"
              f"{(bw if bw else float('nan')):>8.1f}")
    if model_rows:
        print('\nVim-Ti forward at 224x224')
        print(f"{'impl':<8}{'batch':>6}{'s / forward':>13}{'s / image':>11}")
        for r in model_rows:
            print(f"{r['impl']:<8}{r['batch']:>6}{r['seconds']:>13.3f}"
                  f"{r['seconds_per_image']:>11.3f}")


def main():
    args = parse_args()
    impls, kernel_name = implementations(args.device)
    scan_rows = []
    for case in args.cases:
        scan_rows += bench_case(case, impls, args)
    model_rows = [] if args.skip_model else bench_model(args)
    print_table(scan_rows, model_rows, kernel_name)
    device_name = (torch.cuda.get_device_name() if args.device == 'cuda' else
                   platform.processor() or platform.machine())
    result = dict(device=args.device, device_name=device_name,
                  threads=torch.get_num_threads(), torch=torch.__version__,
                  kernel=kernel_name, scan=scan_rows, model=model_rows)
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()
