"""How well an attribution graph predicts real interventions: zero each of the features with the
largest direct effect on the top logit, and compare the top logit's change the graph predicts
(exact in the frozen replacement) with the change in the real model (transcoders spliced in,
attention, norms and later features live).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_tracing_agreement.py [--features 20] [--width 256] [--k 8]
        [--train-samples 100000] [--kind plt|clt]

SmolLM2-135M on a short prompt with per-layer TopK transcoders: random ones (default), or
trained here first on the offline corpus (``--train-samples``, ``train_transcoders``; no trained
ones ship offline). Prints the transcoders' share of unexplained MLP-output variance (FVU) on
held-out text, the graph's replacement and completeness scores, and over the zeroed features the
Pearson correlation, sign agreement and median ratio of real to predicted logit change.
"""

from __future__ import annotations

import argparse

import torch

import mechinterp
from circuits.tracing import intervene, prune_graph, random_transcoders, trace, train_transcoders
from circuits.tracing.training import unexplained_variance
from mechinterp.data.corpus import load_corpus
from mechinterp.sae import TrainingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--prompt", default="The capital of France is Paris. The capital of Italy is")
    parser.add_argument("--train-samples", type=int, default=0, help="train transcoders on this many tokens")
    parser.add_argument("--kind", choices=["plt", "clt"], default="plt")
    args = parser.parse_args()
    model = mechinterp.load_model("smollm2-135m", device="cpu")
    if args.train_samples:
        config = TrainingConfig(samples=args.train_samples, batch_size=512, lr=1e-3)
        tc = train_transcoders(
            model, load_corpus(), d_tc=args.width, kind=args.kind, k=args.k, training=config
        )
    else:
        tc = random_transcoders(model, args.width, kind=args.kind, activation="topk", k=args.k, seed=0)
    fvu = unexplained_variance(model, tc, load_corpus(split="test", max_texts=32))
    print(f"{tc}: FVU {fvu:.3f} on held-out text")
    graph = trace(model, tc, args.prompt, max_logits=1, progress=False)
    pruned = prune_graph(graph)
    print(f"replacement score {pruned.replacement_score:.3f}, completeness {pruned.completeness_score:.3f}")
    sources, weights = graph.incoming(graph.logit_node(0))
    is_feature = sources < graph.n_features
    top = sources[is_feature][weights[is_feature].abs().argsort(descending=True)[: args.features]]
    token = int(graph.logit_tokens[0])
    predicted, frozen, real = [], [], []
    for node in top.tolist():
        feature = tuple(graph.features[node].tolist())
        predicted.append(float(graph.predicted_change({feature: 0.0})[graph.logit_node(0)]))
        frozen.append(float(intervene(model, tc, args.prompt, {feature: 0.0}, frozen=True).change[token]))
        real.append(float(intervene(model, tc, args.prompt, {feature: 0.0}, frozen=False).change[token]))
    predicted_t, frozen_t, real_t = (torch.tensor(v) for v in (predicted, frozen, real))
    print(f"{graph}; top logit {graph.logit_strings[0]!r}; {len(top)} features zeroed one at a time")
    print(f"frozen replacement vs graph: max |diff| {float((frozen_t - predicted_t).abs().max()):.2e}")
    corr = float(torch.corrcoef(torch.stack([predicted_t, real_t]))[0, 1])
    signs = float((predicted_t.sign() == real_t.sign()).float().mean())
    ratio = float((real_t / predicted_t).median())
    print(
        f"real model vs graph: Pearson r {corr:.3f}, same sign {signs:.0%}, median real/predicted {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
