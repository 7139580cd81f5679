#!/usr/bin/env bash
# Fresh machine → the whole wam loop on Pendulum: collect → world model → PPO in imagination →
# real evaluation → runs/demo/report.md + PNG plots.  Extra arguments go to `wam demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
.venv/bin/wam demo "$@"
