#!/usr/bin/env bash
# Create .venv (once) and install gpumem with its test tools. Safe to run again.
# torch is installed first and pinned to the CPU wheel here; pyproject's torch range is then
# already satisfied, so pip never pulls a multi-GB CUDA build. On a GPU machine, install your
# CUDA torch (2.11-2.14) into the venv first, or set GPUMEM_TORCH to the spec you want.
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
  .venv/bin/python -m pip install -q "${GPUMEM_TORCH:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
