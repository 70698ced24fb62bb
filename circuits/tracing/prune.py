"""Pruning an attribution graph by influence on the logits, and its replacement and
completeness scores (Ameisen et al. 2025, §"Graph pruning"; circuit-tracer's ``graph.py``).

With ``|A|`` row-normalised (each target's incoming absolute weights sum to 1) as ``N``, and the
logit nodes weighted by their probabilities ``w``, a node's **influence** is
``w @ (N + N² + N³ + ...)`` = ``w @ ((I - N)^-1 - I)``: the share of the logits that flows
through it over all paths. The series ends because the graph is acyclic; it is summed by sparse
vector-matrix products, one per path length (never a dense matrix).

- nodes: keep the features and errors with the largest influence until they hold
  ``node_threshold`` (0.8) of the total; tokens and logits stay;
- edges: on the graph restricted to the kept nodes, an edge's score is its normalised weight
  times its target's influence (plus the target's logit weight); keep the largest until they
  hold ``edge_threshold`` (0.98) of the total; then drop, repeatedly, features without a kept
  incoming edge and features or errors without a kept outgoing one.

Scores (on the whole graph, as circuit-tracer computes them):

- **replacement score**: the token nodes' share of the influence reaching tokens and errors
  together, ``I_tokens / (I_tokens + I_errors)``: how much of the explanation ends at the input
  rather than at unexplained error nodes;
- **completeness score**: the average over nodes, weighted by influence plus logit weight, of the
  fraction of each node's normalised incoming weight that does *not* come from error nodes.

Example:
    >>> pruned = prune_graph(graph)
    >>> pruned.node_mask.sum(), pruned.edge_mask.sum(), pruned.replacement_score
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuits.tracing.graph import AttributionGraph


@dataclass(frozen=True, eq=False)
class PrunedGraph:
    """The kept part of ``graph``: ``node_mask`` ``[n_nodes]``, ``edge_mask`` over the entries of
    ``graph.edges`` (coalesced order), each node's influence on the logits and its cumulative
    share (``cumulative_influence``: the fraction of the total held by it and every node of larger
    influence; what Neuronpedia's ``influence`` field holds), the graph's scores and the thresholds used."""

    graph: AttributionGraph
    node_mask: Bool[Tensor, " node"]
    edge_mask: Bool[Tensor, " edge"]
    node_influence: Float[Tensor, " node"]
    cumulative_influence: Float[Tensor, " node"]
    replacement_score: float
    completeness_score: float
    node_threshold: float
    edge_threshold: float

    def __repr__(self) -> str:
        return (
            f"PrunedGraph({int(self.node_mask.sum())}/{self.graph.n_nodes} nodes, "
            f"{int(self.edge_mask.sum())}/{self.edge_mask.shape[0]} edges, "
            f"replacement {self.replacement_score:.3f}, completeness {self.completeness_score:.3f})"
        )


def normalized_weights(
    rows: Int[Tensor, " edge"], values: Float[Tensor, " edge"], n_nodes: int
) -> Float[Tensor, " edge"]:
    """``|A|`` with each target row scaled to sum to 1 (rows without edges stay empty)."""
    weights = values.abs()
    totals = torch.zeros(n_nodes, dtype=weights.dtype).index_add(0, rows, weights)
    return weights / totals[rows].clamp(min=1e-10)


def influence(
    rows: Int[Tensor, " edge"],
    cols: Int[Tensor, " edge"],
    weights: Float[Tensor, " edge"],
    start: Float[Tensor, " node"],
) -> Float[Tensor, " node"]:
    """``start @ (N + N² + ...)`` for the sparse matrix ``N[rows, cols] = weights`` of an acyclic graph."""
    total = torch.zeros_like(start)
    current = start
    for _ in range(start.shape[0] + 1):
        current = torch.zeros_like(start).index_add(0, cols, current[rows] * weights)
        if not current.any():
            return total
        total = total + current
    raise ValueError("the graph has a cycle: influence does not converge")


def find_threshold(scores: Float[Tensor, " item"], share: float) -> float:
    """The smallest score among the largest scores that together hold ``share`` of the total."""
    ordered = scores.sort(descending=True).values
    total = ordered.sum()
    if ordered.numel() == 0 or total <= 0:
        return float("inf")
    cumulative = ordered.cumsum(0) / total
    index = min(
        int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype))), len(ordered) - 1
    )
    return float(ordered[index])


def logit_weights(graph: AttributionGraph) -> Float[Tensor, " node"]:
    """The logit nodes' probabilities, zero elsewhere."""
    weights = torch.zeros(graph.n_nodes)
    weights[graph.logit_node(0) :] = graph.logit_probabilities
    return weights


def graph_scores(graph: AttributionGraph) -> tuple[float, float]:
    """``(replacement score, completeness score)`` of ``graph`` (see the module docstring)."""
    rows, cols = graph.edges.indices()
    normalized = normalized_weights(rows, graph.edges.values(), graph.n_nodes)
    start = logit_weights(graph)
    node_influence = influence(rows, cols, normalized, start)
    errors = slice(graph.n_features, graph.token_node(0))
    tokens = slice(graph.token_node(0), graph.logit_node(0))
    from_tokens, from_errors = node_influence[tokens].sum(), node_influence[errors].sum()
    replacement = float(from_tokens / (from_tokens + from_errors).clamp(min=1e-10))
    is_error = (cols >= errors.start) & (cols < errors.stop)
    error_share = torch.zeros(graph.n_nodes).index_add(0, rows[is_error], normalized[is_error])
    output = node_influence + start
    completeness = float(((1 - error_share) * output).sum() / output.sum())
    return replacement, completeness


def prune_graph(
    graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PrunedGraph:
    """The nodes and edges that carry most of the influence on the logits (module docstring).

    Example:
        >>> pruned = prune_graph(trace(model, transcoders, "The cat sat on the"))
        >>> [graph.node_label(int(i)) for i in pruned.node_mask.nonzero()[:5, 0]]
    """
    n = graph.n_nodes
    rows, cols = graph.edges.indices()
    values = graph.edges.values()
    start = logit_weights(graph)
    node_influence = influence(rows, cols, normalized_weights(rows, values, n), start)
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    node_mask[graph.token_node(0) :] = True  # tokens and logits always stay

    kept = node_mask[rows] & node_mask[cols]
    pruned_weights = normalized_weights(rows, values * kept, n)
    target_influence = influence(rows, cols, pruned_weights, start) + start
    edge_scores = pruned_weights * target_influence[rows]
    edge_mask = kept & (edge_scores >= find_threshold(edge_scores, edge_threshold))

    n_inner = graph.token_node(0)  # features and errors
    while True:
        has_out = torch.zeros(n, dtype=torch.bool)
        has_out[cols[edge_mask]] = True
        has_in = torch.zeros(n, dtype=torch.bool)
        has_in[rows[edge_mask]] = True
        new_mask = node_mask.clone()
        new_mask[:n_inner] &= has_out[:n_inner]
        new_mask[: graph.n_features] &= has_in[: graph.n_features]
        edge_mask = edge_mask & new_mask[rows] & new_mask[cols]
        if torch.equal(new_mask, node_mask):
            break
        node_mask = new_mask

    order = node_influence.argsort(descending=True)
    total = node_influence.sum().clamp(min=1e-10)
    cumulative = torch.zeros(n)
    cumulative[order] = node_influence[order].cumsum(0) / total
    replacement, completeness = graph_scores(graph)
    return PrunedGraph(
        graph,
        node_mask,
        edge_mask,
        node_influence,
        cumulative,
        replacement,
        completeness,
        node_threshold,
        edge_threshold,
    )
