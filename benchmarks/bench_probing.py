"""Probing SmolLM2-135M: the built-in tasks' bar, and all layers at once vs one at a time.

    .venv/bin/python benchmarks/bench_probing.py [--n 400] [--seeds 3] [--timing-dataset number_agreement]

1. For every built-in task: collects last-token residual streams once, then trains the
   per-layer logistic probes on the default type-disjoint split (test words never seen in
   training) for ``--seeds`` split seeds, and prints at each seed's best layer (by
   validation accuracy) the test accuracy, the control-task accuracy (Hewitt & Liang 2019,
   mean of 5 draws) and the selectivity, against the bar: accuracy >= 0.85 and selectivity
   >= 0.3. It also prints one random (type-sharing) split, where the control task shows how
   much a probe can get from memorising words. Exits 1 if the bar is missed.
2. Trains the 30 probes of ``--timing-dataset`` (a) as one batched optimisation and (b) as
   30 sequential single-layer optimisations with identical settings, and prints both times,
   their ratio and the largest difference between the two sets of probe weights.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import mechinterp
from mechinterp.probing import BUILT_IN, collect_activations, train_probes
from mechinterp.probing.collect import Activations

ACCURACY_BAR, SELECTIVITY_BAR = 0.85, 0.3


def bar(activations: Activations, name: str, seeds: int) -> bool:
    """Print the best-layer numbers per seed; whether every seed meets the bar."""
    met = True
    for seed in range(seeds):
        result = train_probes(activations, seed=seed)
        best = result.layers.index(result.best_layer)
        accuracy, selectivity = float(result.accuracy["test"][best]), float(result.selectivity[best])
        ok = accuracy >= ACCURACY_BAR and selectivity >= SELECTIVITY_BAR
        met &= ok
        print(
            f"  {name} seed {seed}: best layer {result.best_layer}, test accuracy {accuracy:.3f}, control task "
            f"{float(result.control[best]):.3f}, selectivity {selectivity:.3f}, shuffled labels "
            f"{float(result.shuffled[best]):.3f}, chance {result.chance:.3f} -> {'meets' if ok else 'MISSES'} the bar"
        )
    shared = train_probes(activations, split="random")
    best = shared.layers.index(shared.best_layer)
    print(
        f"  {name} random split (words shared): best layer {shared.best_layer}, test accuracy "
        f"{float(shared.accuracy['test'][best]):.3f}, control task {float(shared.control[best]):.3f}, "
        f"selectivity {float(shared.selectivity[best]):.3f}"
    )
    return met


def timing(activations: Activations, name: str) -> None:
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
    print(
        f"{name}: all layers at once: {batched:.2f}s; one layer at a time: {sequential:.2f}s; "
        f"{sequential / batched:.1f}x faster; max |weight difference| {difference:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timing-dataset", default="number_agreement", choices=sorted(BUILT_IN))
    args = parser.parse_args()
    model = mechinterp.load_model("smollm2-135m")
    device = "cuda" if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.n} examples per task, {model.architecture.n_layers} layers, {device}")
    met = True
    for name, make in BUILT_IN.items():
        activations = collect_activations(model, make(args.n), progress=False)
        met &= bar(activations, name, args.seeds)
        if name == args.timing_dataset:
            timing(activations, name)
    print(f"bar (accuracy >= {ACCURACY_BAR}, selectivity >= {SELECTIVITY_BAR}):", "met" if met else "MISSED")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
