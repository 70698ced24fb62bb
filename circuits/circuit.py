"""A scored circuit: edge scores on a graph, the chosen edges, selection and pruning.

Example:
    >>> circuit = Circuit(graph, eap_scores(model, clean, corrupt, graph, metric)).top_n(50).pruned()
    >>> circuit.n_edges, [e.name for e in circuit.edges_in_graph()][:3]
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuits.graph import Edge, Graph, Node


@dataclass(frozen=True, eq=False)
class Circuit:
    """``scores`` ``[edge]`` (higher magnitude = more important) and ``in_graph`` ``[edge]``."""

    graph: Graph
    scores: Float[Tensor, " edge"]
    in_graph: Bool[Tensor, " edge"] | None = None
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

    def top_nodes(self, n: int) -> Circuit:
        """Keep the edges among the input, the logits and the ``n`` source nodes whose summed
        outgoing edge scores are largest in magnitude (a node-level circuit)."""
        source, pair_edge, pair_target = self.graph.edge_arrays
        n_nodes = len(self.graph.nodes)
        totals = torch.zeros(n_nodes, dtype=torch.float64).index_add_(0, source, self.scores.double())
        totals[0] = totals[-1] = 0  # the input and the logits are always in
        if not 0 <= n <= n_nodes - 2:
            raise ValueError(f"n must be in 0..{n_nodes - 2}, got {n}")
        kept = torch.zeros(n_nodes, dtype=torch.bool)
        kept[totals.abs()[1:-1].topk(n).indices + 1] = True
        kept[0] = kept[-1] = True
        feeds_kept = torch.zeros(len(self.graph.edges), dtype=torch.bool)
        feeds_kept[pair_edge[kept[pair_target]]] = True
        return replace(self, in_graph=kept[source] & feeds_kept)

    def greedy(self, n: int) -> Circuit:
        """Grow a circuit from the logits: repeatedly add the highest-|score| edge into a node
        already in the circuit (Hanna et al. 2024's greedy selection), ``n`` edges in all.
        Every chosen edge leads to the logits; ``pruned()`` then also asks for the input."""
        if not 0 <= n <= len(self.graph.edges):
            raise ValueError(f"n must be in 0..{len(self.graph.edges)}, got {n}")
        source, pair_edge, pair_target = self.graph.edge_arrays
        feeding: dict[int, list[int]] = {}
        for edge, node in zip(pair_edge.tolist(), pair_target.tolist(), strict=True):
            feeding.setdefault(node, []).append(edge)
        magnitude = self.scores.abs().tolist()
        keep = torch.zeros(len(self.graph.edges), dtype=torch.bool)
        frontier: list[tuple[float, int]] = []
        reached: set[int] = set()

        def reach(node: int) -> None:
            if node not in reached:
                reached.add(node)
                for edge in feeding.get(node, []):
                    heapq.heappush(frontier, (-magnitude[edge], edge))

        reach(len(self.graph.nodes) - 1)  # the logits
        chosen = 0
        while chosen < n and frontier:
            _, edge = heapq.heappop(frontier)
            if not keep[edge]:
                keep[edge] = True
                chosen += 1
                reach(int(source[edge]))
        return replace(self, in_graph=keep)

    def threshold(self, value: float) -> Circuit:
        """Keep the edges whose absolute score is at least ``value``."""
        return replace(self, in_graph=self.scores.abs() >= value)

    def pruned(self) -> Circuit:
        """Drop edges that do not lie on an in-graph path from the input to the logits."""
        source, pair_edge, pair_target = self.graph.edge_arrays
        kept_pairs = self.in_graph[pair_edge]
        n_nodes = len(self.graph.nodes)
        reached = _closure(_one_hot(0, n_nodes), source[pair_edge], pair_target, kept_pairs)
        useful = _closure(_one_hot(n_nodes - 1, n_nodes), pair_target, source[pair_edge], kept_pairs)
        feeds_useful = torch.zeros_like(self.in_graph)
        feeds_useful[pair_edge[useful[pair_target]]] = True
        return replace(self, in_graph=self.in_graph & reached[source] & feeds_useful)

    def nodes_in_graph(self) -> set[Node]:
        return {n for e in self.edges_in_graph() for n in (e.source, e.target)}


def _one_hot(index: int, size: int) -> Tensor:
    start = torch.zeros(size, dtype=torch.bool)
    start[index] = True
    return start


def _closure(start: Tensor, frm: Tensor, to: Tensor, kept: Tensor) -> Tensor:
    """Nodes reachable from ``start`` along the kept ``frm -> to`` pairs."""
    reached = start.clone()
    while True:
        grown = reached.clone()
        grown[to[kept & reached[frm]]] = True
        if torch.equal(grown, reached):
            return reached
        reached = grown
