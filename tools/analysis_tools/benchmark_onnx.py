"""Latency of an exported model in ONNX Runtime against PyTorch eager (CPU).

    python tools/analysis_tools/benchmark_onnx.py CONFIG CHECKPOINT MODEL.onnx
        [--threads 1] [--batch 1] [--shape H W] [--warmup 2] [--repeats 10]
        [--out onnx_latency.json]

MODEL.onnx is what ``tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT``
wrote. Both runtimes get the same random image batch (at the exported size,
or --shape for a --dynamic export) and run the whole model from the image
on, normalisation included: PyTorch eager as mmvim runs it (the compiled
CPU scan kernel where it builds, under ``torch.inference_mode``), ONNX
Runtime's CPU execution provider on the exported graph. ``--threads`` sets
both ``torch.set_num_threads`` and ONNX Runtime's intra-op threads. The
table gives the median milliseconds per image over ``--repeats`` timed runs
after ``--warmup`` untimed ones, and the outputs' relative L2 (the two
compute the same thing); ``--out`` writes it all as JSON. Timings are for
reading, never asserted.
"""
import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
from mmengine.config import DictAction

import mmvim  # noqa: F401  (registers the Vim modules, safe checkpoint loading)
from mmvim.deployment import OnnxExportWrapper, OnnxRunner, load_model
from mmvim.engine import (exit_on_user_error, quiet_known_warnings,
                          write_json)
from mmvim.ops import select_scan_impl


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('onnx', help='the exported .onnx file')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='image size (default: the exported size)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='the --cfg-options the model was exported with')
    parser.add_argument('--out', help='write the results to this JSON file')
    return parser.parse_args(argv)


def median_seconds(run, warmup, repeats):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    args = parse_args(argv)
    quiet_known_warnings()
    with exit_on_user_error():
        runner = OnnxRunner(args.onnx, num_threads=args.threads)
        model = load_model(args.config, args.checkpoint, args.cfg_options)
    wrapper = OnnxExportWrapper(model).eval()
    shape = tuple(args.shape) if args.shape else tuple(
        int(v) for v in runner.metadata['exported_shape'].split('x'))
    torch.manual_seed(0)
    image = torch.rand(args.batch, 3, *shape) * 255
    try:
        runner.check_input(image.numpy())
    except ValueError as error:
        raise SystemExit(f'error: {error}') from None
    torch.set_num_threads(args.threads)

    with torch.inference_mode():
        eager_out = wrapper(image).numpy()
        eager = median_seconds(lambda: wrapper(image), args.warmup,
                               args.repeats)
    onnx_out = runner(image.numpy())
    onnx_time = median_seconds(lambda: runner(image.numpy()), args.warmup,
                               args.repeats)
    rel_l2 = float(np.linalg.norm(onnx_out - eager_out) /
                   np.linalg.norm(eager_out))

    scan = select_scan_impl('cpu')
    rows = [
        dict(runtime=f'PyTorch {torch.__version__} eager (scan: {scan})',
             ms_per_image=eager * 1e3 / args.batch),
        dict(runtime=f'ONNX Runtime {ort.__version__} '
             '(CPUExecutionProvider)',
             ms_per_image=onnx_time * 1e3 / args.batch),
    ]
    for row in rows:
        row['images_per_s'] = 1e3 / row['ms_per_image']
    result = dict(
        config=args.config, onnx=args.onnx, task=wrapper.task,
        shape=list(shape), batch=args.batch, threads=args.threads,
        warmup=args.warmup, repeats=args.repeats, rows=rows,
        onnx_vs_eager=rows[1]['ms_per_image'] / rows[0]['ms_per_image'],
        relative_l2=rel_l2, cpu=cpu_name(), cpus=os.cpu_count(),
        date=datetime.date.today().isoformat())

    print(f'{wrapper.task} at {shape[0]}x{shape[1]}, batch {args.batch}, '
          f'{args.threads} thread(s), median of {args.repeats} '
          f'({result["cpu"]}, {result["cpus"]} cores)')
    print('| runtime | ms / image | images / s |')
    print('|---|---|---|')
    for row in rows:
        print(f"| {row['runtime']} | {row['ms_per_image']:.1f} | "
              f"{row['images_per_s']:.2f} |")
    print(f'ONNX Runtime / eager time: {result["onnx_vs_eager"]:.2f}x; '
          f'outputs differ by {rel_l2:.1e} (relative L2)')
    if args.out:
        write_json(args.out, result)
        print(f'wrote {args.out}')
    return result


if __name__ == '__main__':
    main()
