#!/usr/bin/env bash
# Create .venv (once) and install gpumem (the distribution torch-gpumem) with its test tools.
# Safe to run again.
# torch is installed first, so that pyproject's torch range is already satisfied and pip never
# pulls another (multi-GB CUDA) build behind your back. GPUMEM_TORCH is the spec (default
# torch==2.13.0), GPUMEM_TORCH_INDEX the index to take it from: without a GPU,
# GPUMEM_TORCH_INDEX=https://download.pytorch.org/whl/cpu gets the CPU build (PyPI's Linux
# wheels are CUDA builds). On a GPU machine, install your CUDA torch (2.11-2.15) into the venv
# first: a venv that already has a torch keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  # The first interpreter that really runs and is 3.11 or 3.12 (a pyenv shim can exist and fail).
  for candidate in python3 python3.12 python3.11; do
    if "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)' \
        >/dev/null 2>&1; then
      PY=$candidate
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup.sh: needs Python 3.11 or 3.12 (set PYTHON=/path/to/python)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "${GPUMEM_TORCH:-torch==2.13.0}" \
    ${GPUMEM_TORCH_INDEX:+--index-url "$GPUMEM_TORCH_INDEX"}
fi
# This project was installed as the distribution "gpumem" before it became torch-gpumem: remove
# that old install (it would share the `gpumem` script), never PyPI's unrelated gpumem.
old=$(.venv/bin/python -m pip show gpumem 2>/dev/null || true)
case "$old" in
  *"Summary: Live GPU memory profiler for PyTorch"*) .venv/bin/python -m pip uninstall -q -y gpumem ;;
esac
.venv/bin/python -m pip install -q -e ".[dev]"
