#!/usr/bin/env bash
# Create (or reuse) the pinned mmvim environment in .venv/ at the repository root.
#
#   bash tools/setup_env.sh          # idempotent: seconds when .venv is already complete
#   bash tools/setup_env.sh --plan   # print what this machine gets, build nothing
#
# The stack is pinned (Python 3.11, torch 2.11.0 / torchvision 0.26.0 from PyPI,
# mmengine 0.10.7, mmcv 2.1.0 compiled from source against that torch,
# mmsegmentation 1.2.2, mmdet 3.3.0, mmpretrain 1.2.0). mmcv is always built
# with --no-build-isolation and --no-cache-dir: a cached wheel built against
# another torch imports with an undefined-symbol error.
#
# Two kinds of environment:
# - cpu:  mmcv's ops for the CPU only (about 10 minutes to compile on 2 cores);
# - cuda: where an NVIDIA GPU and nvcc are (or MMVIM_WITH_CUDA=1), mmcv is
#   compiled with its CUDA ops too (RoIAlign, NMS, ... that the detection
#   configs run on the GPU), for the visible GPUs' architectures
#   (TORCH_CUDA_ARCH_LIST overrides them; 8.0;9.0 when forced without a GPU).
#   Needs nvcc of CUDA 13.x (torch 2.11's CUDA) in $CUDA_HOME, on PATH or in
#   /usr/local/cuda; cuBLAS / cuSPARSE headers come from torch's pip
#   dependencies (site-packages/nvidia/cu13). About 35 minutes on 2 cores for
#   one architecture; MMVIM_WITH_CUDA=0 keeps the cpu kind on a GPU machine.
# The kind is part of the ready-stamp, so an environment built for the CPU is
# completed with mmcv's CUDA ops, not reused, on a GPU machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMVIM_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3.11}"
PLAN=0
if [[ "${1:-}" == "--plan" ]]; then PLAN=1; fi

# Everything the environment depends on; a change here rebuilds what changed.
PINS=(
  "setuptools>=77,<82"
  "wheel"
  "numpy<2"
  "opencv-python<4.11"
  "torch==2.11.0"
  "torchvision==0.26.0"
  "mmengine==0.10.7"
)
MMCV_PIN="mmcv==2.1.0"
DOWNSTREAM=(
  "mmsegmentation==1.2.2"
  "mmdet==3.3.0"
  "mmpretrain==1.2.0"
  "ftfy"
  "regex"
  "ninja"
  "pytest"
  "matplotlib"
  # DeiT for benchmark_efficiency.py --deit-impl timm: the GPU machine of
  # tools/gpu_check.sh has timm but no mmpretrain; tested against it here
  "timm==1.0.31"
  # tools/deployment/pytorch2onnx.py: torch.onnx's exporter needs onnx and
  # onnxscript; the tests run the exported models in ONNX Runtime (CPU)
  "onnx==1.23.2"
  "onnxscript==0.7.2"
  "onnxruntime==1.32.0"
  # mim train / test / search mmvim, the OpenMMLab front door
  "openmim==0.3.9"
)
# the CUDA that the pinned torch wheel is built with; nvcc must match its major
TORCH_CUDA_VERSION="13.0"

log() { echo "[setup_env] $*"; }
die() { echo "[setup_env] error: $*" >&2; exit 1; }

# --- which kind of environment this machine needs ---------------------------
gpu_archs() {  # compute capabilities of the visible GPUs, e.g. "8.0;9.0"
  command -v nvidia-smi >/dev/null || return 0
  nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null |
    tr -d ' ' | grep -E '^[0-9]+\.[0-9]+$' | sort -u | paste -sd';' || true
}
find_cuda_home() {  # a toolkit with bin/nvcc and the runtime headers
  local nvcc candidates=("${CUDA_HOME:-}" "${CUDA_PATH:-}")
  nvcc="$(command -v nvcc || true)"
  [[ -n "$nvcc" ]] && candidates+=("$(dirname "$(dirname "$(readlink -f "$nvcc")")")")
  candidates+=("${MMVIM_DEFAULT_CUDA_HOME:-/usr/local/cuda}")
  for home in "${candidates[@]}"; do
    if [[ -n "$home" && -x "$home/bin/nvcc" && -f "$home/include/cuda_runtime.h" ]]; then
      echo "$home"; return
    fi
  done
}
nvcc_version() { "$1/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p'; }

ARCHS="$(gpu_archs)"
CUDA_TOOLKIT="$(find_cuda_home)"
case "${MMVIM_WITH_CUDA:-auto}" in
  1) WITH_CUDA=1 ;;
  0) WITH_CUDA=0 ;;
  auto) [[ -n "$ARCHS" && -n "$CUDA_TOOLKIT" ]] && WITH_CUDA=1 || WITH_CUDA=0 ;;
  *) die "MMVIM_WITH_CUDA=${MMVIM_WITH_CUDA} is not valid: use 1, 0 or leave it unset" ;;
esac
if [[ -n "$ARCHS" && "$WITH_CUDA" == 0 && "${MMVIM_WITH_CUDA:-auto}" == auto ]]; then
  log "note: a GPU is here but no nvcc: mmcv gets CPU ops only, and the detection" \
      "configs cannot run on the GPU; set CUDA_HOME to a CUDA $TORCH_CUDA_VERSION toolkit to fix it"
fi
if [[ "$WITH_CUDA" == 1 ]]; then
  [[ -n "$CUDA_TOOLKIT" ]] || die "mmcv's CUDA ops need nvcc: set CUDA_HOME to a CUDA $TORCH_CUDA_VERSION toolkit (or MMVIM_WITH_CUDA=0)"
  NVCC_VERSION="$(nvcc_version "$CUDA_TOOLKIT")"
  [[ "${NVCC_VERSION%%.*}" == "${TORCH_CUDA_VERSION%%.*}" ]] ||
    die "nvcc in $CUDA_TOOLKIT is CUDA $NVCC_VERSION but torch is built with CUDA $TORCH_CUDA_VERSION; set CUDA_HOME to a CUDA ${TORCH_CUDA_VERSION%%.*}.x toolkit (or MMVIM_WITH_CUDA=0)"
  CUDA_ARCHS="${TORCH_CUDA_ARCH_LIST:-${ARCHS:-8.0;9.0}}"
  KIND="cuda-${CUDA_ARCHS//[^0-9.+]/_}"
else
  KIND="cpu"
fi

STAMP_KEY="$(printf '%s\n' "${PINS[@]}" "$MMCV_PIN" "${DOWNSTREAM[@]}" | sha1sum | cut -c1-12)"
STAMP="$VENV/.mmvim-env-$STAMP_KEY-$KIND"
# which kind mmcv was compiled for (environments from before this file: cpu)
MMCV_KIND_FILE="$VENV/.mmvim-mmcv-kind"
PY_VERSION="$("$PYTHON_BIN" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3.11)"
# cuBLAS / cuSPARSE headers and libraries that torch's ATen/cuda headers need
NVIDIA_DIR="$VENV/lib/python$PY_VERSION/site-packages/nvidia/cu13"

mmcv_build_env() {  # the variables mmcv's setup.py reads, one per line
  echo "MMCV_WITH_OPS=1"
  echo "MAX_JOBS=${MAX_JOBS:-$(nproc)}"
  if [[ "$WITH_CUDA" == 1 ]]; then
    echo "FORCE_CUDA=1"
    echo "TORCH_CUDA_ARCH_LIST=$CUDA_ARCHS"
    echo "CUDA_HOME=$CUDA_TOOLKIT"
    echo "CPATH=$NVIDIA_DIR/include${CPATH:+:$CPATH}"
    echo "LIBRARY_PATH=$NVIDIA_DIR/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
  else
    echo "FORCE_CUDA=0"
  fi
}

if [[ "$PLAN" == 1 ]]; then
  echo "kind=$KIND"
  echo "gpu_archs=${ARCHS:-none}"
  echo "cuda_home=${CUDA_TOOLKIT:-none}"
  [[ "$WITH_CUDA" == 1 ]] && echo "nvcc_version=$NVCC_VERSION"
  echo "stamp=$STAMP"
  mmcv_build_env | sed 's/^/mmcv_build: /'
  exit 0
fi

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import mmvim, mmcv, mmseg, mmdet, mmpretrain" 2>/dev/null; then
  log "environment ready in $VENV ($KIND)"
  exit 0
fi

if ! command -v "$PYTHON_BIN" >/dev/null; then
  die "$PYTHON_BIN not found; install Python 3.11 or set PYTHON=/path/to/python3.11"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $("$PYTHON_BIN" --version)"
  "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
# pip only; hides the warnings about absent local index folders some machines list
pip_install() {
  "${PIP[@]}" install "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}

log "installing the pinned base stack (torch from PyPI, several GB on the first run)"
pip_install -q "${PINS[@]}"

if ! "$PY" -c "import mmcv, mmcv.ops" 2>/dev/null || \
   [[ "$("$PY" -c 'import mmcv; print(mmcv.__version__)' 2>/dev/null)" != "2.1.0" ]] || \
   [[ "$(cat "$MMCV_KIND_FILE" 2>/dev/null || echo cpu)" != "$KIND" ]]; then
  if [[ "$WITH_CUDA" == 1 ]]; then
    log "compiling $MMCV_PIN with its CUDA ops for $CUDA_ARCHS (nvcc $NVCC_VERSION in $CUDA_TOOLKIT) against torch $("$PY" -c 'import torch; print(torch.__version__)') (about 35 minutes on 2 cores)"
  else
    log "compiling $MMCV_PIN from source against torch $("$PY" -c 'import torch; print(torch.__version__)') (about 10 minutes on 2 cores)"
  fi
  # the source build is what makes the ops match this torch's ABI;
  # --force-reinstall replaces an mmcv of the other kind
  (
    # shellcheck disable=SC2046  # one NAME=value per line, no spaces
    export $(mmcv_build_env)
    pip_install -q --no-build-isolation --no-cache-dir --no-binary mmcv --force-reinstall --no-deps "$MMCV_PIN"
  )
  echo "$KIND" > "$MMCV_KIND_FILE"
fi

log "installing mmsegmentation / mmdet / mmpretrain and test tools"
pip_install -q "${DOWNSTREAM[@]}" "${PINS[@]}" "$MMCV_PIN"

log "installing mmvim in editable mode"
pip_install -q --no-deps --no-build-isolation -e "$ROOT"

MMVIM_ENV_KIND="$KIND" "$PY" - <<'PYEOF'
import os
import torch, torchvision, mmengine, mmcv, mmseg, mmdet, mmpretrain
from mmcv.ops import RoIAlign  # compiled ops must import against this torch
print(f"[setup_env] torch {torch.__version__} torchvision {torchvision.__version__} "
      f"mmengine {mmengine.__version__} mmcv {mmcv.__version__} mmseg {mmseg.__version__} "
      f"mmdet {mmdet.__version__} mmpretrain {mmpretrain.__version__}")
if os.environ['MMVIM_ENV_KIND'].startswith('cuda'):
    import mmcv._ext
    with open(mmcv._ext.__file__, 'rb') as f:
        assert b'ROIAlignForwardCUDAKernelLauncher' in f.read(), \
            'mmcv was built without its CUDA ops'
    if torch.cuda.is_available():
        # one RoIAlign on the GPU against torchvision's
        from torchvision.ops import roi_align
        x = torch.randn(2, 8, 32, 32, device='cuda')
        rois = torch.tensor([[0, 1., 2., 20., 25.], [1, 4., 0., 30., 12.]],
                            device='cuda')
        ours = RoIAlign((7, 7), 1.0, sampling_ratio=2, aligned=True)(x, rois)
        ref = roi_align(x, rois, (7, 7), 1.0, sampling_ratio=2, aligned=True)
        err = (ours - ref).abs().max().item()
        assert err < 1e-4, f'mmcv CUDA RoIAlign differs from torchvision: {err}'
        print(f"[setup_env] mmcv CUDA RoIAlign matches torchvision on "
              f"{torch.cuda.get_device_name()} (max error {err:.1e})")
PYEOF
rm -f "$VENV"/.mmvim-env-*
touch "$STAMP"
log "environment ready in $VENV ($KIND)"
