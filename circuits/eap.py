"""Edge attribution patching (EAP; Syed et al. 2023): a gradient score for every edge at once.

EAP estimates the effect of patching edge ``source -> target channel`` as
``(corrupt_output[source] - clean_output[source]) . dM/d(input of the target channel)``,
summed over positions, from one clean forward and backward pass and one corrupted forward
pass. Where the metric is linear in the target's input this is exact edge patching.

Example:
    >>> scores = eap_scores(model, clean, corrupt, Graph.from_model(model), metric)   # [edge]
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.edge_patching import _destination_hook, _source_outputs
from circuits.graph import Graph, Node
from mechinterp.metrics import PositionalMetric


def eap_scores(model, clean: Tensor, corrupt: Tensor, graph: Graph, metric: PositionalMetric) -> Tensor:
    """EAP scores ``[edge]`` (summed over the batch): the estimated change of the summed metric
    when each edge alone carries the corrupted source."""
    clean, corrupt = clean.to(model.device), corrupt.to(model.device)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupt_cache = model.run_with_cache(corrupt)
        clean_out, corrupt_out = _source_outputs(model, clean_cache), _source_outputs(model, corrupt_cache)
    inputs: dict[str, Tensor] = {}

    def keep(value: Tensor, hook) -> Tensor:
        inputs[hook.name] = value
        return value

    def leaf(value: Tensor, hook) -> Tensor:
        return value.detach().requires_grad_(True)

    names = {_destination_hook(e.target.layer, e.channel, model) for e in graph.edges}
    previous = model.blocks[0].use_split_qkv_input
    model.set_use_split_qkv_input(True)
    try:
        with (
            torch.enable_grad(),
            model.hooks(fwd_hooks=[("hook_embed", leaf), *((n, keep) for n in sorted(names))]),
        ):
            logits = model(clean)
            rows = torch.arange(clean.shape[0], device=model.device)
            total = metric.score(logits[rows, metric.positions.to(model.device)], rows).sum()
            ordered = sorted(names)
            grads = dict(zip(ordered, torch.autograd.grad(total, [inputs[n] for n in ordered]), strict=True))
    finally:
        model.set_use_split_qkv_input(previous)
    scores = torch.empty(len(graph.edges))
    for index, edge in enumerate(graph.edges):  # gradients carry no graph: plain arithmetic
        grad = grads[_destination_hook(edge.target.layer, edge.channel, model)]
        if edge.channel in ("q", "k", "v"):
            grad = grad[:, :, edge.target.head]
        delta = corrupt_out[edge.source] - clean_out[edge.source]
        scores[index] = (delta * grad).sum()
    return scores


def node_scores(graph: Graph, edge_scores: Tensor) -> dict[Node, float]:
    """A node-level view: each source node's summed outgoing edge scores."""
    totals: dict[Node, float] = {}
    for edge, score in zip(graph.edges, edge_scores.tolist(), strict=True):
        totals[edge.source] = totals.get(edge.source, 0.0) + score
    return totals
