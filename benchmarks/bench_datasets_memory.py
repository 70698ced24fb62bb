"""Peak memory of ``diff_corpora`` on SmolLM2-135M: it must not grow with the corpora.

    .venv/bin/python benchmarks/bench_datasets_memory.py [--texts 400 4000] [--hook blocks.3.hook_resid_post]

Each run is a fresh subprocess (so peaks do not mix) that loads the model, builds a random
TopK SAE (4608 latents, k=32) at ``hook``, notes its RSS, diffs the first N texts of WordNet
against the first N of Debian fortunes (the ``diff`` step's default corpora; its shipped
config reads 400 of each) and reports the process's peak RSS
(``resource.getrusage(...).ru_maxrss``), the accumulated state's size and the time taken.
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
from mechinterp.datasets import diff_corpora
from mechinterp.sae import SAE, SAEConfig

n_texts, hook = int(sys.argv[1]), sys.argv[2]
model = mechinterp.load_model("smollm2-135m", device="cpu")
sae = SAE.create(SAEConfig(architecture="topk", k=32, d_in=576, d_sae=4608, hook_name=hook))
a = load_corpus("wordnet", "train", max_texts=n_texts)
b = load_corpus("fortunes", "train", max_texts=n_texts)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
start = time.perf_counter()
diff = diff_corpora(model, sae, a, b, progress=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
windows = sum(c.windows for c in diff.counts.values())
state = sum(c.state_nbytes() for c in diff.counts.values())
print(json.dumps({"texts": n_texts, "windows": windows, "loaded_gb": loaded, "peak_gb": peak, "state_kb": state / 1024, "seconds": seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, nargs="+", default=[400, 4000])
    parser.add_argument("--hook", default="blocks.3.hook_resid_post")
    args = parser.parse_args()
    print(
        f"{'texts/corpus':>13}{'windows':>9}{'RSS after load (GB)':>21}{'peak RSS (GB)':>15}{'state (KB)':>12}{'s':>6}"
    )
    for n in args.texts:
        found = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), args.hook], capture_output=True, text=True, check=True
        )
        row = json.loads(found.stdout.strip().splitlines()[-1])
        print(
            f"{row['texts']:>13}{row['windows']:>9}{row['loaded_gb']:>21.2f}{row['peak_gb']:>15.2f}"
            f"{row['state_kb']:>12.0f}{row['seconds']:>6.0f}"
        )


if __name__ == "__main__":
    main()
