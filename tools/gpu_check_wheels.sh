#!/usr/bin/env bash
# Download the wheels that `import mmvim` needs on the borrowed GPU machine
# into .whl/ (ignored by git), for tools/gpu_check.sh to install there.
#
#   bash tools/gpu_check_wheels.sh [DEST]      # default DEST: <repo>/.whl
#
# That machine (Python 3.12, x86-64, no network) has torch, numpy, opencv,
# matplotlib, pyyaml, rich, pillow, packaging and ninja, but no OpenMMLab
# package. mmvim imports mmengine (which imports addict, termcolor and yapf;
# yapf imports platformdirs) and its SimpleFPN neck imports mmcv.cnn, which
# the pure-Python mmcv-lite provides (no compiled ops: mmvim needs none).
# All are pure Python: --no-deps, one pinned version each (two versions of
# one package stop pip's install there). Their Requires-Dist beyond these are
# on the machine already (checked against its package list).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.whl}"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY=python3
fi

WHEELS=(
  "mmengine==0.10.7"     # the pinned mmengine of setup_env.sh
  "mmcv-lite==2.1.0"     # mmcv.cnn without the compiled ops
  "addict==2.4.0"        # mmengine's Config
  "termcolor==3.3.0"     # mmengine's logging
  "yapf==0.43.0"         # mmengine's Config formatting
  "platformdirs==4.14.9" # imported by yapf
)

mkdir -p "$DEST"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 -d "$DEST" "${WHEELS[@]}"

# one version of each package: an older download beside a new pin breaks
# the install on the GPU machine
dups="$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | sort | uniq -d)"
if [[ -n "$dups" ]]; then
  echo "error: several versions of: $dups in $DEST; remove the old ones" >&2
  exit 1
fi
echo "wheels in $DEST:"
ls -1 "$DEST"/*.whl | xargs -n1 basename
echo "total: $(du -ch "$DEST"/*.whl | tail -1 | cut -f1)"
