"""Probing every layer of SmolLM2-135M at once vs one layer at a time, in one process.

    .venv/bin/python benchmarks/bench_probing.py [--n 400] [--dataset number_agreement]

Collects last-token residual streams for a built-in dataset once, then trains the 30
logistic probes (a) as one batched optimisation and (b) as 30 sequential single-layer
optimisations with identical settings, and prints both times, their ratio, the largest
difference between the two sets of probe weights, and the per-layer accuracies.
"""

from __future__ import annotations

import argparse
import time

import torch

import mechinterp
from mechinterp.probing import BUILT_IN, collect_activations, train_probes
from mechinterp.probing.collect import Activations


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--dataset", default="number_agreement", choices=sorted(BUILT_IN))
    args = parser.parse_args()
    model = mechinterp.load_model("smollm2-135m")
    activations = collect_activations(model, BUILT_IN[args.dataset](args.n), progress=False)
    start = time.perf_counter()
    together = train_probes(activations, controls=False)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    singles = []
    for index, layer in enumerate(activations.layers):
        alone = Activations(
            activations.values[index : index + 1],
            activations.labels,
            activations.type_ids,
            [layer],
            activations.hook,
            activations.model_name,
            activations.n_layers,
        )
        singles.append(train_probes(alone, controls=False))
    sequential = time.perf_counter() - start
    difference = max((s.weight[0] - together.weight[i]).abs().max().item() for i, s in enumerate(singles))
    device = "cuda" if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"{args.dataset}, {args.n} examples, {len(activations.layers)} layers, d_model {activations.values.shape[-1]}, "
        f"{device}"
    )
    print(
        f"all layers at once: {batched:.2f}s; one layer at a time: {sequential:.2f}s; "
        f"{sequential / batched:.1f}x faster; max |weight difference| {difference:.1e}"
    )
    full = train_probes(activations)
    best = full.best_layer
    print(
        f"best layer {best}: test accuracy {full.accuracy['test'][best]:.3f}, shuffled labels "
        f"{full.shuffled[best]:.3f}, control task {full.control[best]:.3f}, chance {full.chance:.3f}"
    )
    print("test accuracy per layer:", " ".join(f"{v:.2f}" for v in full.accuracy["test"].tolist()))


if __name__ == "__main__":
    main()
