#!/usr/bin/env bash
# Create .venv (once) and install gpumem with its test tools. Safe to run again.
# torch is installed first and pinned to the CPU wheel here; pyproject's torch range is then
# already satisfied, so pip never pulls a multi-GB CUDA build. On a GPU machine, install your
# CUDA torch (2.11-2.14) into the venv first, or set GPUMEM_TORCH to the spec you want.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "${GPUMEM_TORCH:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
