#!/usr/bin/env bash
# Set up a local virtual environment (.venv) with torch and matmeta installed editable.
#
#   bash scripts/setup.sh        # runtime dependencies
#   bash scripts/setup.sh dev    # plus pytest, hypothesis, ruff
#
# Where no torch is present, a CPU build is installed first (a bare `torch` requirement would
# pull a multi-GB CUDA build). GPU users: install your CUDA torch into .venv before running this;
# an existing torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extra=${1:-}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # A CPU build of torch 2.13.0 on this machine's disk (found by pip's configured find-links),
  # else the official CPU wheel index.
  tmp=$(mktemp -d)
  if "$PY" -m pip download -q --no-index --no-deps -d "$tmp" torch==2.13.0 >/dev/null 2>&1; then
    "$PY" -m pip install -q torch==2.13.0
  else
    "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
  rm -rf "$tmp"
fi

if [ "$extra" = "dev" ]; then
  "$PY" -m pip install -q -e ".[dev]"
else
  "$PY" -m pip install -q -e .
fi
"$PY" -c "import torch, matmeta; print(f'matmeta {matmeta.__version__} ready (torch {torch.__version__})')"
