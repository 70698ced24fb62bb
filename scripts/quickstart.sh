#!/usr/bin/env bash
# Set up (first run only) and run the quickstart on the embedded model smollm2-135m.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m mechinterp "$@"
