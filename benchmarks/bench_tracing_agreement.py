"""How well an attribution graph predicts real interventions: zero each of the features with the
largest direct effect on the top logit, and compare the top logit's change the graph predicts
(exact in the frozen replacement) with the change in the real model (transcoders spliced in,
attention, norms and later features live).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_tracing_agreement.py [--features 20] [--width 256] [--k 8]

SmolLM2-135M on a short prompt with random per-layer TopK transcoders (no trained ones ship
offline), so the numbers say how far the frozen linearisation is from the model for features of
this size, not how good any trained transcoder is. Prints the Pearson correlation, the sign
agreement and the median ratio real / predicted over the features.
"""

from __future__ import annotations

import argparse

import torch

import mechinterp
from circuits.tracing import intervene, random_transcoders, trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--prompt", default="The capital of France is Paris. The capital of Italy is")
    args = parser.parse_args()
    model = mechinterp.load_model("smollm2-135m", device="cpu")
    tc = random_transcoders(model, args.width, kind="plt", activation="topk", k=args.k, seed=0)
    graph = trace(model, tc, args.prompt, max_logits=1, progress=False)
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
