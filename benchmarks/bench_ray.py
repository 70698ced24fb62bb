"""A patching sweep over IOI prompt pairs: one process vs 1 and 2 Ray workers.

    .venv/bin/python benchmarks/bench_ray.py [--pairs 64] [--kind resid_pre] [--layers 0 1 ...]
                                             [--workers 1 2] [--model smollm2-135m]

Every run uses one torch thread per process (the single process and each Ray worker), so
two workers use two cores and one worker one. Ray workers are started and have loaded
their model replica before the clock starts (a warm-up sweep over one pair), so the times
are the sweep itself: tokenised pairs out, per-pair results back, plus Ray's scheduling.
Each configuration is checked to give the single process's tensors.

Bars (issue 17): Ray with one worker costs <= 1.3x the single process; two workers are
>= 1.5x faster than one. Compare the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mechinterp.data import ioi_pairs
from mechinterp.distributed import ModelSpec, RayExecutor
from mechinterp.patching import SweepSpec, patch_sweep


def median_seconds(run, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--kind", default="resid_pre")
    parser.add_argument("--layers", type=int, nargs="*", help="layers to patch (default: all)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(1)
    spec = ModelSpec(source=args.model, options={"device": "cpu"})
    model = spec.build()
    pairs = ioi_pairs(model, args.pairs, seed=0)
    sweep = SweepSpec(kind=args.kind, layers=tuple(args.layers) if args.layers else None)

    def run(executor=None, select=None):
        chosen = pairs if select is None else pairs.select(select)
        return patch_sweep(
            model,
            chosen.clean,
            chosen.corrupt,
            sweep,
            chosen.metric(),
            attention_mask=chosen.attention_mask,
            executor=executor,
            progress=False,
        )

    single, expected = median_seconds(run, args.repeats)
    print(f"{args.pairs} IOI pairs, {args.kind} sweep on {args.model}: single process {single:.2f} s")
    for workers in args.workers:
        with RayExecutor(spec, address="local", num_workers=workers, torch_threads=1) as executor:
            run(executor, select=workers)  # start the actors and load the replicas
            seconds, result = median_seconds(lambda executor=executor: run(executor), args.repeats)
        torch.testing.assert_close(result.values, expected.values, rtol=1e-5, atol=1e-5)
        print(
            f"Ray, {workers} worker{'s' if workers > 1 else ''}: {seconds:.2f} s = "
            f"{seconds / single:.2f}x the single process ({result.metadata['shards']} shards; same tensors)"
        )


if __name__ == "__main__":
    main()
