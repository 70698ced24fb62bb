"""Circuit discovery on SmolLM2-135M with IOI prompt pairs: speed bars and the circuits found.

    .venv/bin/python benchmarks/bench_circuits.py [--pairs 8] [--out runs/circuits] [--device cpu]

1. EAP over every edge of the graph, timed against one forward + backward pass on the same
   batch (the gradient of the summed metric with respect to the input embeddings).
2. A 20-point faithfulness curve as one batched call, timed against 20 separate evaluations
   (one circuit each) plus the two reference runs.
3. The IOI circuit each gradient algorithm finds (EAP, EAP-IG): its size after pruning, its
   faithfulness (resample and mean ablation), the area under its faithfulness curve and its
   top edges. Exact edge patching and ACDC are not run here: on this graph they need tens of
   thousands of batched forward rows (hours on a 2-core CPU); they are tested on tiny and
   toy models (``tests/test_circuits_*``, ``tests/test_induction_circuit.py``).

Curves and circuits are written to ``--out`` (HTML figures, circuit JSON). Everything runs
in one process; compare the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import mechinterp
from circuits import (
    ALGORITHMS,
    Circuit,
    EAPConfig,
    EAPIGConfig,
    Graph,
    eap_scores,
    evaluate_circuit,
    faithfulness_curve,
    patch_edges,
    write,
)
from mechinterp.data import ioi_pairs
from mechinterp.plotting import faithfulness_figure


def median_seconds(run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_backward(model, pairs, metric) -> None:
    def leaf(value, hook):
        return value.detach().requires_grad_(True)

    kept = {}

    def keep(value, hook):
        kept["embed"] = value
        return value

    with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf), ("hook_embed", keep)]):
        logits = model(pairs.clean, attention_mask=pairs.attention_mask)
        torch.autograd.grad(metric(logits).sum(), kept["embed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--out", default="runs/circuits")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    model = mechinterp.load_model("smollm2-135m", device=args.device)
    pairs = ioi_pairs(model, args.pairs)
    metric = pairs.metric()
    graph = Graph.from_model(model)
    mask = pairs.attention_mask
    print(
        f"{model}\n{len(graph.edges)} edges, {len(graph.nodes)} nodes, {args.pairs} IOI pairs x {pairs.clean.shape[1]} tokens"
    )

    # 1. EAP vs forward + backward
    forward_backward(model, pairs, metric)  # warm up
    eap_scores(model, pairs.clean, pairs.corrupt, graph, metric, attention_mask=mask)
    base = median_seconds(lambda: forward_backward(model, pairs, metric))
    eap = median_seconds(
        lambda: eap_scores(model, pairs.clean, pairs.corrupt, graph, metric, attention_mask=mask)
    )
    print(
        f"\n1. forward+backward {base:.3f} s | EAP over all {len(graph.edges)} edges {eap:.3f} s = {eap / base:.2f}x"
    )

    # 2. faithfulness curve: one batched call vs separate evaluations
    scores = eap_scores(model, pairs.clean, pairs.corrupt, graph, metric, attention_mask=mask) / len(pairs)
    circuit = Circuit(graph, scores, metadata={"algorithm": "eap"})
    n_edges = len(graph.edges)  # points packed towards small circuits, where the curve moves
    counts = sorted({round(n_edges * (i / (args.points - 1)) ** 3) for i in range(args.points)})
    order = scores.abs().argsort(descending=True)

    def batched():
        return faithfulness_curve(
            model, pairs.clean, pairs.corrupt, circuit, metric, counts, attention_mask=mask
        )

    def separate():
        rows = [torch.ones(1, n_edges) for _ in counts] + [torch.zeros(1, n_edges), torch.ones(1, n_edges)]
        for row, count in zip(
            rows[: len(counts)], counts, strict=True
        ):  # each circuit, then the full model and all patched
            row[0, order[:count]] = 0
        return [
            patch_edges(model, pairs.clean, pairs.corrupt, graph, r, metric, attention_mask=mask)
            for r in rows
        ]

    curve = batched()
    one_call = median_seconds(batched, repeats=1)
    many_calls = median_seconds(separate, repeats=1)
    print(
        f"2. {len(counts)}-point faithfulness curve: batched {one_call:.2f} s | {len(counts) + 2} separate "
        f"evaluations {many_calls:.2f} s = {many_calls / one_call:.1f}x faster batched"
    )

    # 3. the circuits each gradient algorithm finds
    print("\n3. IOI circuits (top 300 edges before pruning)")
    configs = {"eap": EAPConfig(top_n=300), "eap-ig": EAPIGConfig(top_n=300, steps=5)}
    for name, config in configs.items():
        start = time.perf_counter()
        found = ALGORITHMS[name](model, pairs, metric, graph, config=config)
        seconds = time.perf_counter() - start
        resample = evaluate_circuit(model, pairs.clean, pairs.corrupt, found, metric, attention_mask=mask)
        mean = evaluate_circuit(
            model, pairs.clean, pairs.corrupt, found, metric, ablation="mean", attention_mask=mask
        )
        ranked = Circuit(graph, found.scores)
        area = faithfulness_curve(
            model, pairs.clean, pairs.corrupt, ranked, metric, counts, attention_mask=mask
        )
        top = sorted(found.edges_in_graph(), key=lambda e: -abs(float(found.scores[graph.edge_index[e]])))[:8]
        heads = sorted(
            {n.name for e in found.edges_in_graph() for n in (e.source, e.target) if n.kind == "head"}
        )
        print(
            f"  {name:7s} {seconds:6.1f} s | {found.n_edges} edges, {len(found.nodes_in_graph())} nodes after pruning | "
            f"faithfulness {resample.faithfulness:.2f} (resample), {mean.faithfulness:.2f} (mean) | "
            f"curve area {area.area:.3f}"
        )
        print(f"          top edges: {', '.join(e.name for e in top)}")
        print(f"          heads ({len(heads)}): {', '.join(heads[:24])}{' ...' if len(heads) > 24 else ''}")
        write(found, out / f"ioi_{name}.json", to="json")
        faithfulness_figure(area).write_html(out / f"ioi_{name}_faithfulness.html", include_plotlyjs="cdn")
    print(
        f"\nfull model {curve.full_model:.3f}, all edges patched {curve.all_patched:.3f}; outputs in {out}/"
    )


if __name__ == "__main__":
    main()
