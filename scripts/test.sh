#!/usr/bin/env bash
# Set up (first run only) and run the test suite, tiny models and SmolLM2-135M. Arguments go to
# pytest: `-m e2e` runs only the end-to-end runs the default leaves out, `-m ""` everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
