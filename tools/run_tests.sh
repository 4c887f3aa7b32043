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
# The Slurm tests run a real one-node Slurm: Debian's slurm-wlm and munge,
# installed here (as root, with apt-get) when missing. Where that fails the
# Slurm tests fail on CI (CI=true) and are skipped elsewhere, with the reason.
SLURM_PACKAGES=(slurm-wlm munge)
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "run_tests: installing ${SLURM_PACKAGES[*]} for the Slurm tests"
    apt_install() {
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${SLURM_PACKAGES[@]}" >/dev/null
    }
    apt_install || { apt-get update -q >/dev/null && apt_install; } ||
      echo "run_tests: could not install ${SLURM_PACKAGES[*]}" >&2
  else
    echo "run_tests: ${SLURM_PACKAGES[*]} missing; installing them needs" \
      "root and apt-get" >&2
  fi
fi
cd "$ROOT"
exec "${MMVIM_VENV:-$ROOT/.venv}/bin/python" -m pytest tests "$@"
