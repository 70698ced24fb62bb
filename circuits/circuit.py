"""A scored circuit: edge scores on a graph, the chosen edges, selection and pruning.

Example:
    >>> circuit = Circuit(graph, eap_scores(model, clean, corrupt, graph, metric)).top_n(50).pruned()
    >>> circuit.n_edges, [e.name for e in circuit.edges_in_graph()][:3]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from circuits.graph import Edge, Graph, Node


@dataclass(frozen=True, eq=False)
class Circuit:
    """``scores`` ``[edge]`` (higher magnitude = more important) and ``in_graph`` ``[edge]``."""

    graph: Graph
    scores: Tensor
    in_graph: Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scores.shape != (len(self.graph.edges),):
            raise ValueError(f"scores must be [{len(self.graph.edges)}], got {tuple(self.scores.shape)}")
        if self.in_graph is None:
            object.__setattr__(self, "in_graph", torch.ones(len(self.graph.edges), dtype=torch.bool))

    @property
    def n_edges(self) -> int:
        return int(self.in_graph.sum())

    def edges_in_graph(self) -> list[Edge]:
        return [edge for edge, keep in zip(self.graph.edges, self.in_graph.tolist(), strict=True) if keep]

    def top_n(self, n: int) -> Circuit:
        """Keep the ``n`` edges with the largest absolute scores."""
        if not 0 <= n <= len(self.graph.edges):
            raise ValueError(f"n must be in 0..{len(self.graph.edges)}, got {n}")
        keep = torch.zeros(len(self.graph.edges), dtype=torch.bool)
        keep[self.scores.abs().topk(n).indices] = True
        return replace(self, in_graph=keep)

    def threshold(self, value: float) -> Circuit:
        """Keep the edges whose absolute score is at least ``value``."""
        return replace(self, in_graph=self.scores.abs() >= value)

    def pruned(self) -> Circuit:
        """Drop edges that do not lie on an in-graph path from the input to the logits."""
        edges = self.edges_in_graph()
        reached = {Node("input")}
        for node in self.graph.nodes:  # nodes are in topological order
            if any(e.target == node and e.source in reached for e in edges):
                reached.add(node)
        useful = {Node("logits")}
        for node in reversed(self.graph.nodes):
            if any(e.source == node and e.target in useful for e in edges):
                useful.add(node)
        keep = torch.tensor(
            [
                bool(k) and e.source in reached and e.target in useful
                for e, k in zip(self.graph.edges, self.in_graph.tolist(), strict=True)
            ]
        )
        return replace(self, in_graph=keep)

    def nodes_in_graph(self) -> set[Node]:
        return {n for e in self.edges_in_graph() for n in (e.source, e.target)}
