"""Registers, stack and spills of the CUDA scan kernels, from ptxas.

    python tools/analysis_tools/ptxas_report.py [--arch sm_90]
        [--out work_dirs/ptxas_sm_90.txt] [--json work_dirs/ptxas_sm_90.json]

Compiles every ``.cu`` file of ``ops/selective_scan/csrc`` for one GPU
architecture with the flags of the JIT build plus ``-Xptxas -v`` (device
code only: no GPU needed, nvcc is), and prints one row per kernel: registers
per thread, stack frame bytes, spill stores and loads, shared memory. The
raw ptxas output goes to ``--out``. With ``--check-spills N`` it exits 1 if
a kernel that serves a state size up to N spills registers (the CI check;
a kernel with no state size in its template serves every N).
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CSRC = osp.join(REPO, 'ops', 'selective_scan', 'csrc')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='sm_90',
                        help='GPU architecture (default: sm_90, the H100/H200)')
    parser.add_argument('--out', default=None,
                        help='raw ptxas output (default: '
                        'work_dirs/ptxas_<arch>.txt)')
    parser.add_argument('--json', default=None, help='the table as JSON')
    parser.add_argument('--check-spills', type=int, default=None,
                        metavar='N',
                        help='exit 1 if a kernel for state size <= N spills')
    return parser.parse_args()


def nvcc_command(source, arch, cubin):
    """The JIT build's nvcc flags (see extension_loader.build_flags) for
    device code of one arch, with ptxas's resource report."""
    from mmvim.ops.extension_loader import (build_flags, cpp_extension_quiet,
                                            cuda_home)
    cpp_extension = cpp_extension_quiet()
    home = cuda_home()
    if home is None:
        raise SystemExit('nvcc not found: set CUDA_HOME to a CUDA toolkit')
    _, cuda_flags, _ = build_flags('cuda')
    flags = [f for f in cuda_flags if not f.startswith('-gencode')]
    includes = [f'-I{p}' for p in cpp_extension.include_paths('cpu')]
    return [osp.join(home, 'bin', 'nvcc'), '-cubin', f'-arch={arch}',
            *flags, *cpp_extension.COMMON_NVCC_FLAGS, '-Xptxas', '-v',
            f'-I{CSRC}', *includes, source, '-o', cubin]


def demangle(names):
    try:
        out = subprocess.run(['c++filt'], input='\n'.join(names),
                             capture_output=True, text=True, check=True)
        return out.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(\w+)'")
FRAME = re.compile(r'(\d+) bytes stack frame, (\d+) bytes spill stores, '
                   r'(\d+) bytes spill loads')
USAGE = re.compile(r'Used (\d+) registers(?:.*?(\d+) bytes smem)?')


def parse(report):
    """ptxas -v output -> one dict per kernel entry."""
    rows, row = [], None
    for line in report.splitlines():
        m = ENTRY.search(line)
        if m:
            row = dict(symbol=m.group(1), arch=m.group(2))
            rows.append(row)
            continue
        if row is None:
            continue
        m = FRAME.search(line)
        if m and 'stack' not in row:
            row.update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                       spill_loads=int(m.group(3)))
        m = USAGE.search(line)
        if m and 'registers' not in row:
            row.update(registers=int(m.group(1)),
                       smem=int(m.group(2) or 0))
    for row, name in zip(rows, demangle([r['symbol'] for r in rows])):
        row['kernel'] = name.split('(')[0].replace('void ', '')
        m = re.search(r'<[^,<>]+, (\d+)>', name)  # <T, kMaxN>
        row['max_state'] = int(m.group(1)) if m else None
    return rows


def report(arch):
    """(rows, raw text) for every .cu file of the scan, compiled for arch."""
    texts = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sorted(glob.glob(osp.join(CSRC, '*.cu'))):
            cmd = nvcc_command(source, arch, osp.join(tmp, 'out.cubin'))
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f'nvcc failed on {source}:\n'
                                 f'{result.stderr[-4000:]}')
            texts.append(f'# {osp.basename(source)}\n{result.stderr}')
    text = '\n'.join(texts)
    return parse(text), text


def main():
    args = parse_args()
    rows, text = report(args.arch)
    out = args.out or osp.join(REPO, 'work_dirs', f'ptxas_{args.arch}.txt')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        f.write(text)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    print(f'{"kernel":60s} {"regs":>5s} {"stack":>6s} {"spill st":>9s} '
          f'{"spill ld":>9s} {"smem":>6s}')
    for r in rows:
        print(f'{r["kernel"]:60s} {r.get("registers", 0):5d} '
              f'{r.get("stack", 0):6d} {r.get("spill_stores", 0):9d} '
              f'{r.get("spill_loads", 0):9d} {r.get("smem", 0):6d}')
    print(f'ptxas output for {args.arch}: {out}')
    if args.check_spills is not None:
        checked = [r for r in rows if r['max_state'] is None or
                   r['max_state'] <= args.check_spills]
        spilling = [r['kernel'] for r in checked
                    if r.get('spill_stores') or r.get('spill_loads')]
        if not checked:
            print('no kernel for a state size <= '
                  f'{args.check_spills} found', file=sys.stderr)
            sys.exit(1)
        if spilling:
            print(f'kernels for N <= {args.check_spills} spill registers: '
                  + ', '.join(spilling), file=sys.stderr)
            sys.exit(1)
        print(f'no spills in the {len(checked)} kernels for N <= '
              f'{args.check_spills}')


if __name__ == '__main__':
    main()
