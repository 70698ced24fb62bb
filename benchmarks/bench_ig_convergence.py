"""How integrated gradients' completeness gap falls with steps on SmolLM2-135M.

    .venv/bin/python benchmarks/bench_ig_convergence.py [--steps 32 64 128 256 512]
        [--prompts 1 2] [--baselines pad zero corrupt]

For two prompts (logit difference of the right answer over a wrong one) and three baselines
(the pad token at every position, zero embeddings, and a corrupt prompt of the same length),
prints the relative completeness gap ``|sum of attributions - (f(x) - f(baseline))| /
|f(x) - f(baseline)|`` of Gauss-Legendre integrated gradients at each step count. The step
counts are the ones ``steps="auto"`` tries (it doubles from 32), so each row also shows
where ``auto`` stops at the default 5% tolerance.
"""

from __future__ import annotations

import argparse
import time
import warnings

import mechinterp
from mechinterp.token_attribution import attribute_tokens

PROMPTS = [
    ("The Eiffel Tower is in the city of", "The Colosseum is in the city of", " Paris", " London"),
    (
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to",
        " Mary",
        " John",
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 2], help="which prompts (1, 2)")
    parser.add_argument("--baselines", nargs="+", default=["pad", "zero", "corrupt"])
    args = parser.parse_args()
    model = mechinterp.load_model("smollm2-135m", device="cpu")
    header = "".join(f"{n:>8}" for n in args.steps)
    print(f"{'prompt':<8}{'baseline':<10}{header}   auto (tol {args.tolerance:.0%})")
    for index, (prompt, corrupt, correct, incorrect) in enumerate(PROMPTS):
        if index + 1 not in args.prompts:
            continue
        if len(model.to_tokens(prompt)[0]) != len(model.to_tokens(corrupt)[0]):
            corrupt = None  # a corrupt prompt must have the same length
        for name, baseline in (("pad", "pad"), ("zero", "zero"), ("corrupt", corrupt)):
            if baseline is None or name not in args.baselines:
                continue
            gaps, start = [], time.perf_counter()
            for steps in args.steps:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = attribute_tokens(
                        model, prompt, correct=correct, incorrect=incorrect, steps=steps, baseline=baseline
                    )
                gaps.append(found.completeness.max_gap)
            auto = next((n for n, g in zip(args.steps, gaps, strict=True) if g <= args.tolerance), None)
            cells = "".join(f"{g:>8.1%}" for g in gaps)
            stop = f"{auto} steps" if auto else f"not within {args.steps[-1]}"
            print(
                f"{index + 1:<8}{name:<10}{cells}   {stop}  ({time.perf_counter() - start:.0f}s)", flush=True
            )


if __name__ == "__main__":
    main()
