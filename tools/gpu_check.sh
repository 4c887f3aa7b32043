#!/usr/bin/env bash
# Validate and benchmark mmvim on a borrowed GPU in one prepared run.
#
#   bash tools/gpu_check.sh OUT_DIR [--quick] [--dry-run] [--budget SECONDS]
#
# What it does (tools/analysis_tools/gpu_check.py does the work; this is the
# wrapper that picks the Python):
#   stage 0 env         install the carried wheels (.whl/*.whl) into /tmp/site
#                       with pip --target --no-deps (mmvim itself is imported
#                       from the checkout, not installed), print GPU, driver,
#                       torch, CUDA, nvcc, import mmvim
#   stage 1 build       compile the CUDA scan kernel for the GPU's architecture
#                       (timed), with the simt kernel and the probes that
#                       stage 2 loads built beside it in parallel
#   stage 2 tests       pytest tests/test_ops/test_selective_scan_cuda.py and
#                       test_simt_emulation.py -k "not address" on the device
#                       (passed / failed counts from JUnit XML)
#   stage 3 scan        benchmark_scan.py --device cuda: fused kernel, flip
#                       composition, reference; bandwidth against the bytes
#                       each call must move
#   stage 4 efficiency  benchmark_efficiency.py's grid: Vim-Ti/S against
#                       DeiT-Ti/S (timm's, where mmpretrain is missing), eager
#                       and SDPA attention, 512-1248 and growing, inference
#                       and training, float32 and bfloat16, backbone and +FPN,
#                       in priority order (the paper's 1248 comparison first)
#   stage 5 amp         one bfloat16-autocast training step of Vim-Ti at
#                       1024x1024, batch 8: time per step, peak memory
#   summary             a table on stdout; OUT_DIR/gpu_check.json with every
#                       stage's status (ran / skipped + reason / failed +
#                       error), times and key numbers, and the paper's 1248
#                       targets (2.8x the images/s of eager DeiT-Ti, <= 13.2%
#                       of its memory) marked met / not met / not measured
#
# Time caps: the whole run fits a budget of 480 s (--quick: 180 s, fewer
# resolutions / dtypes / modes / repeats, no growth past 1248; --budget
# changes it). Each stage has its own cap (env 90, build 180, tests 120,
# scan 60, amp 45 s; --quick 60, 150, 35, 20, 30 s; efficiency gets what the
# others leave) and never more than the budget left after keeping the least
# each later stage needs (CAPS in gpu_check.py); a stage that reaches its cap
# is stopped and keeps what it measured ("partial"), one that cannot get its
# least is skipped, each with the reason printed and recorded. Inside the
# benchmarks a row or measurement that would not end in time is not started
# and is listed as skipped.
#
# --dry-run (no GPU): every stage on the CPU on tiny shapes (the simt build,
# ten emulated kernel tests, tiny benchmarks, a tiny AMP step), the same JSON
# layout; about a minute once the simt kernel is cached
# (~/.cache/mmvim/extensions).
#
# OUT_DIR gets at most 5 files (the GPU machine sends back 8): gpu_check.json,
# gpu_check.log (everything printed), benchmark_scan.json,
# benchmark_efficiency.json, benchmark_efficiency.png. Exit status 0 when no
# stage failed.
#
# What must travel with the working tree to the GPU machine (it has torch,
# timm, triton, pytest, numpy, opencv, matplotlib, pyyaml, rich, ninja and
# nvcc, but no OpenMMLab package and no network): the checkout itself, and
# the ignored folder .whl/ with the pure-Python wheels that `import mmvim`
# needs there (mmengine 0.10.7, mmcv-lite 2.1.0 for mmcv.cnn, addict,
# termcolor, yapf, platformdirs; about 1.5 MB). Prepare it here, once:
#
#   bash tools/gpu_check_wheels.sh          # downloads them into .whl/
#
# then run, in the repository root on the GPU machine, with .whl carried:
#
#   bash tools/gpu_check.sh "$OUT"          # or --quick
#
# Python: $PYTHON if set, else .venv/bin/python where the checkout has one,
# else python3 (the GPU machine's, which holds torch).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY=python3
fi
export PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/tools/analysis_tools/gpu_check.py" "$@"
