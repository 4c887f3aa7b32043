#!/usr/bin/env bash
# Run the mmvim test suite in the pinned environment (created on first use).
#
#   bash tools/run_tests.sh            # everything
#   bash tools/run_tests.sh -k conformance -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
# nvcc's own guess (/usr/local) cannot link libcudart for the JIT-built op
if [[ -z "${CUDA_HOME:-}" && -d /usr/local/cuda ]]; then
  export CUDA_HOME=/usr/local/cuda
fi
cd "$ROOT"
exec "${MMVIM_VENV:-$ROOT/.venv}/bin/python" -m pytest tests "$@"
