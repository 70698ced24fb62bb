"""Tuned lens vs logit lens on SmolLM2-135M, held-out text (about 2-3 minutes on 2 CPU cores).

    .venv/bin/python benchmarks/bench_tuned_lens.py [--steps 60] [--out runs/tuned_lens]

Trains the translators on 300 paragraphs of the offline stdlib-docstring corpus, then
prints the mean KL(final || lens) per layer on 40 held-out paragraphs for both lenses, and
saves the trained lens.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mechinterp
from mechinterp.lens import TunedLens, stdlib_corpus


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("runs/tuned_lens"))
    args = parser.parse_args()
    model = mechinterp.load_model("smollm2-135m")
    corpus = stdlib_corpus(340)
    start = time.perf_counter()
    lens = TunedLens.train(model, corpus[:300], steps=args.steps, tokens_per_step=32, lr=2e-3)
    seconds = time.perf_counter() - start
    kl = lens.evaluate(model, corpus[300:])
    lens.save(args.out)
    print(f"trained {args.steps} steps in {seconds:.0f}s; held-out mean KL(final || lens) per layer:")
    print(f"{'layer':>6}{'logit lens':>12}{'tuned lens':>12}")
    for layer, (logit, tuned) in enumerate(zip(kl["logit"].tolist(), kl["tuned"].tolist(), strict=True)):
        print(f"{layer:>6}{logit:12.2f}{tuned:12.2f}")
    print(
        "tuned lens lower at every layer:", bool((kl["tuned"] < kl["logit"]).all()), f"; saved to {args.out}"
    )


if __name__ == "__main__":
    main()
