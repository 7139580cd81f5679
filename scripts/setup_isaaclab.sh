#!/usr/bin/env bash
# Create .venv-isaaclab (Python 3.12) with Isaac Lab 3.0 for the optional `isaaclab`
# sim2real backend, then build its local robot asset folder (assets/isaaclab/).
# Isaac Lab pins torch 2.11 (a multi-GB CUDA build from PyPI) and needs Python 3.12, so it
# lives apart from .venv (Python 3.11, torch CPU); wam talks to it through a subprocess.
# Usage: bash scripts/setup_isaaclab.sh        (PYTHON312=/path/to/python3.12 to choose)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON312:-}"
if [ -z "$PY" ]; then
  for cand in python3.12 /root/.pyenv/versions/3.12.1/bin/python3.12; do
    # a pyenv shim exists even when that version is not selected: run it to be sure
    if "$cand" -c "import sys; assert sys.version_info[:2] == (3, 12)" >/dev/null 2>&1; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "error: Python 3.12 not found (set PYTHON312=/path/to/python3.12)" >&2; exit 2; }
if [ ! -x .venv-isaaclab/bin/python ]; then
  "$PY" -m venv .venv-isaaclab
fi
VPY=.venv-isaaclab/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
$VPY -m pip install --quiet --upgrade pip
$VPY -m pip install "isaaclab==3.0.0" "onnxruntime>=1.18"
# The kit-less URDF / MJCF -> USD converter (isaaclab's `importers` extra). PyPI's
# isaaclab[importers]==3.0.0 cannot resolve: isaacsim-asset-isolated 6.2.0.0 pins
# usd-exchange==2.3.0 and newton-usd-schemas==0.5.0 where isaaclab 3.0.0 pins
# usd-exchange==3.0.1. The converter runs fine on isaaclab's versions, so the two
# isaacsim wheels go in without their pins and the rest of their requirements explicitly.
$VPY -m pip install --no-deps "isaacsim-asset-isolated==6.2.0.0" "isaacsim-robot-schema==6.2.0.0"
$VPY -m pip install "urdf-usd-converter==0.3.2" "mujoco-usd-converter==0.6.1" "usd-optimize==1.1.0" \
  "tinyobjloader==2.0.0rc13" "usd-exchange==3.0.1"
$VPY -c "import isaaclab, onnxruntime; from isaacsim.asset.importer.urdf import URDFImporter; print('isaaclab', isaaclab.__version__)"
# robot files for Isaac Lab (ANYmal C, G1 29-DoF) from wam's own assets/ -> assets/isaaclab/
if [ ! -f assets/manifest.json ]; then
  echo "error: assets/ has no robot files; run scripts/setup_venv.sh first (it fetches them)" >&2; exit 2
fi
OMP_NUM_THREADS=1 $VPY -m sim2real.isaaclab.assets
