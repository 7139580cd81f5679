#!/usr/bin/env bash
# Fresh machine → the default test suite (slow and isaaclab tests excluded; run them with
# `.venv/bin/pytest -m slow`).  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test,export,pixels,vla
.venv/bin/python -m pytest -q "$@"
