"""Position-aware circuits on SmolLM2-135M: IOI's spans (io, s1, s2, end, other).

    .venv/bin/python benchmarks/bench_positional.py [--n 8] [--device cpu]

1. For EAP, EAP-IG and RelP, the position-aware scores ``[edge, span]`` summed over spans
   against the position-free scores (max difference relative to the largest score).
2. The top (edge, span) pairs of EAP-IG.
3. Faithfulness (resample) of circuits of the same size in (edge, span) pairs: the top
   pairs of the position-aware scores, against the top position-free edges kept at every
   span (a position-free edge is one pair per span), all on the same masked executor.
"""

from __future__ import annotations

import argparse
import time

import torch

import mechinterp
from circuits import Graph, PositionalCircuit, eap_ig_scores, eap_scores, positional_faithfulness, relp_scores
from circuits.positional import positional_scores
from mechinterp.data import ioi_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = mechinterp.load_model("smollm2-135m", device=args.device)
    pairs = ioi_pairs(model, args.n, seed=0)
    metric, graph = pairs.metric(), Graph.from_model(model)
    print(f"SmolLM2-135M, {len(pairs)} IOI pairs, spans {pairs.spans.labels}, {len(graph.edges)} edges")
    free_scores = {"eap": eap_scores, "eap-ig": eap_ig_scores, "relp": relp_scores}
    circuits = {}
    for method, score in free_scores.items():
        start = time.perf_counter()
        circuit = positional_scores(model, pairs, metric, graph, method=method)
        seconds = time.perf_counter() - start
        free = score(model, pairs.clean, pairs.corrupt, graph, metric) / len(pairs)
        gap = float((circuit.scores.sum(1) - free).abs().max() / free.abs().max())
        print(
            f"{method:7s} position-aware {seconds:5.1f}s; sum over spans vs position-free: max rel diff {gap:.1e}"
        )
        circuits[method] = circuit
    best = circuits["eap-ig"]
    print("EAP-IG's top (edge, span) pairs:")
    for flat in best.scores.abs().flatten().topk(8).indices.tolist():
        edge, span = divmod(flat, best.spans.n_spans)
        print(
            f"    {graph.edges[edge].name:22s} @ {best.spans.labels[span]:5s} {best.scores[edge, span]:+.3f}"
        )
    print("| method | (edge, span) pairs | position-aware top pairs | position-free top edges, every span |")
    print("|---|---|---|---|")
    n_spans = best.spans.n_spans
    for method, circuit in circuits.items():
        for pairs_kept in (500, 1500, 5000):
            aware = positional_faithfulness(model, pairs, circuit.top_n(pairs_kept), metric)
            free = circuit.scores.sum(1)
            keep = torch.zeros(len(graph.edges), dtype=torch.bool)
            keep[free.abs().topk(pairs_kept // n_spans).indices] = True
            spread = PositionalCircuit(
                graph, circuit.spans, circuit.scores, keep[:, None].expand(-1, n_spans)
            )
            blind = positional_faithfulness(model, pairs, spread, metric)
            print(f"| {method} | {pairs_kept} | {aware:.3f} | {blind:.3f} |", flush=True)


if __name__ == "__main__":
    main()
