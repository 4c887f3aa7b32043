#!/usr/bin/env bash
# Create (or reuse) the pinned mmvim environment in .venv/ at the repository root.
#
#   bash tools/setup_env.sh        # idempotent: seconds when .venv is already complete
#
# The stack is pinned (Python 3.11, torch 2.11.0 / torchvision 0.26.0 from PyPI,
# mmengine 0.10.7, mmcv 2.1.0 compiled from source against that torch,
# mmsegmentation 1.2.2, mmdet 3.3.0, mmpretrain 1.2.0). mmcv is always built
# with --no-build-isolation and --no-cache-dir: a cached wheel built against
# another torch imports with an undefined-symbol error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMVIM_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3.11}"

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
)
STAMP_KEY="$(printf '%s\n' "${PINS[@]}" "$MMCV_PIN" "${DOWNSTREAM[@]}" | sha1sum | cut -c1-12)"
STAMP="$VENV/.mmvim-env-$STAMP_KEY"

log() { echo "[setup_env] $*"; }

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import mmvim, mmcv, mmseg, mmdet, mmpretrain" 2>/dev/null; then
  log "environment ready in $VENV"
  exit 0
fi

if ! command -v "$PYTHON_BIN" >/dev/null; then
  echo "[setup_env] error: $PYTHON_BIN not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 1
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
   [[ "$("$PY" -c 'import mmcv; print(mmcv.__version__)' 2>/dev/null)" != "2.1.0" ]]; then
  log "compiling $MMCV_PIN from source against torch $("$PY" -c 'import torch; print(torch.__version__)') (about 10 minutes on 2 cores)"
  # CPU ops only here; the source build is what makes the ops match this torch's ABI.
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    pip_install -q --no-build-isolation --no-cache-dir --no-binary mmcv "$MMCV_PIN"
fi

log "installing mmsegmentation / mmdet / mmpretrain and test tools"
pip_install -q "${DOWNSTREAM[@]}" "${PINS[@]}" "$MMCV_PIN"

log "installing mmvim in editable mode"
pip_install -q --no-deps --no-build-isolation -e "$ROOT"

"$PY" - <<'PYEOF'
import torch, torchvision, mmengine, mmcv, mmseg, mmdet, mmpretrain
from mmcv.ops import RoIAlign  # compiled ops must import against this torch
print(f"[setup_env] torch {torch.__version__} torchvision {torchvision.__version__} "
      f"mmengine {mmengine.__version__} mmcv {mmcv.__version__} mmseg {mmseg.__version__} "
      f"mmdet {mmdet.__version__} mmpretrain {mmpretrain.__version__}")
PYEOF
rm -f "$VENV"/.mmvim-env-*
touch "$STAMP"
log "environment ready in $VENV"
