"""Greedy generation with and without the key/value cache, in one process.

    .venv/bin/python benchmarks/bench_generate.py [--new-tokens 48] [--repeats 3] [--device cpu]

SmolLM2-135M-Instruct, fp32, one prompt, ``stop_at_eos=False`` so both runs produce exactly
``--new-tokens`` tokens. Runs are interleaved and the median is reported; the printed ratio
(without cache / with cache) is the number to compare, and the tokens must be identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mechinterp

PROMPT = "The Eiffel Tower is in the city of"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()

    model = mechinterp.load_model(args.model, device=args.device)
    tokens = model.to_tokens(PROMPT)
    outputs: dict[bool, torch.Tensor] = {}
    times: dict[bool, list[float]] = {True: [], False: []}

    def run(use_cache: bool) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs[use_cache] = model.generate(
            tokens, max_new_tokens=args.new_tokens, stop_at_eos=False, use_past_kv_cache=use_cache
        )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(True)  # warm-up
    for _ in range(args.repeats):
        for use_cache in (False, True):
            times[use_cache].append(run(use_cache))
    without, with_cache = statistics.median(times[False]), statistics.median(times[True])
    same = torch.equal(outputs[True], outputs[False])
    print(f"{args.model}, {tokens.shape[1]}-token prompt, {args.new_tokens} new tokens, {args.device}")
    print(f"  without cache: {without:.3f} s   with cache: {with_cache:.3f} s")
    print(f"  speed-up: {without / with_cache:.2f}x   identical tokens: {same}")
    if not same:
        raise SystemExit("the cached and uncached runs generated different tokens")


if __name__ == "__main__":
    main()
