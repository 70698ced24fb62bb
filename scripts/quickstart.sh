#!/usr/bin/env bash
# Set up (first run only), put smollm2-135m in place, and run the main job: IOI on
# SmolLM2-135M (configs/ioi_smollm2.yaml). Ends with the path of report.html.
# Extra arguments go to `mechinterp run`, e.g. --set dataset.n=4
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mechinterp models pull smollm2-135m
.venv/bin/mechinterp run configs/ioi_smollm2.yaml --out runs/ioi_smollm2 "$@"
