#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite, tiny models and SmolLM2-135M.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
