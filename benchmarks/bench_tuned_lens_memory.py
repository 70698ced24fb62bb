"""Peak memory of ``TunedLens.train`` on SmolLM2-135M: it must not grow with the texts.

    .venv/bin/python benchmarks/bench_tuned_lens_memory.py [--steps 200] [--texts 2000 20000]

Each run is a fresh subprocess (so peaks do not mix) that loads the model, notes its RSS,
trains the lens on the first N texts of the default corpus's training split and reports the
process's peak RSS (``resource.getrusage(...).ru_maxrss``) and the time taken.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, time
import mechinterp
from mechinterp.data.corpus import load_corpus
from mechinterp.lens import TunedLens

n_texts, steps = int(sys.argv[1]), int(sys.argv[2])
model = mechinterp.load_model("smollm2-135m", device="cpu")
texts = load_corpus("default", "train", max_texts=n_texts)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
start = time.perf_counter()
TunedLens.train(model, texts, steps=steps, progress=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"texts": len(texts), "steps": steps, "model_loaded_gb": loaded, "peak_gb": peak, "seconds": seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--texts", type=int, nargs="+", default=[2000, 20000])
    args = parser.parse_args()
    print(f"{'texts':>7}{'steps':>7}{'RSS after load (GB)':>21}{'peak RSS (GB)':>15}{'train s':>9}")
    for n in args.texts:
        found = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), str(args.steps)], capture_output=True, text=True, check=True
        )
        row = json.loads(found.stdout.strip().splitlines()[-1])
        print(
            f"{row['texts']:>7}{row['steps']:>7}{row['model_loaded_gb']:>21.2f}"
            f"{row['peak_gb']:>15.2f}{row['seconds']:>9.0f}"
        )


if __name__ == "__main__":
    main()
