"""The computational graph of a transformer, as circuits see it.

Nodes are the components that write into the residual stream (the input embedding, each
attention head, each MLP) plus the logits. An edge goes from a node to a later component's
*input channel*: a head's query, key or value input, an MLP's input, or the logits. A
component's input is the sum of the outputs of every node before it (plus constant
biases), so every (earlier node, later channel) pair is an edge.

Example:
    >>> graph = Graph.from_model(model)
    >>> len(graph.nodes), len(graph.edges)
    >>> graph.edges[0]
    Edge(source=Node(kind='input'), target=Node(kind='head', layer=0, head=0), channel='q')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

NodeKind = Literal["input", "head", "mlp", "logits"]
Channel = Literal["q", "k", "v", "mlp", "logits"]


@dataclass(frozen=True, order=True)
class Node:
    """``input`` (embeddings), ``head`` (layer, head), ``mlp`` (layer) or ``logits``."""

    kind: NodeKind
    layer: int | None = None
    head: int | None = None

    @property
    def name(self) -> str:
        """EAP-IG style name: ``input``, ``a3.h1``, ``m5``, ``logits``."""
        if self.kind == "head":
            return f"a{self.layer}.h{self.head}"
        if self.kind == "mlp":
            return f"m{self.layer}"
        return self.kind


@dataclass(frozen=True, order=True)
class Edge:
    """``source`` writes into ``target``'s ``channel`` input. For ``k`` and ``v`` channels the
    target head is a key/value head (under grouped-query attention it serves several query
    heads)."""

    source: Node
    target: Node
    channel: Channel

    @property
    def name(self) -> str:
        """EAP-IG style: ``a3.h1->m5``, ``input->a0.h0<q>``."""
        suffix = f"<{self.channel}>" if self.channel in ("q", "k", "v") else ""
        return f"{self.source.name}->{self.target.name}{suffix}"


def _writes_before(source: Node, target: Node, parallel: bool) -> bool:
    """Whether ``source``'s output is part of ``target``'s input."""
    if source.kind == "input" or target.kind == "logits":
        return source.kind != "logits"
    if target.kind == "head":
        return source.layer < target.layer
    # MLP target: earlier layers, plus this layer's heads in sequential blocks
    return source.layer < target.layer or (
        source.kind == "head" and source.layer == target.layer and not parallel
    )


@dataclass(frozen=True)
class Graph:
    """All nodes and edges of a model, with a fixed edge order (``edge_index``).
    ``d_model`` is the model's residual width (``None`` for graphs read from files that
    predate it); exporters that describe the model (EAP-IG's ``cfg``) need it."""

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    model_name: str
    n_layers: int
    n_heads: int
    edge_index: dict[Edge, int] = field(compare=False, repr=False)
    d_model: int | None = None

    @classmethod
    def from_model(cls, model) -> Graph:
        """Every node and edge of ``model``. Key and value edges end at key/value heads, so
        grouped-query models need no un-grouping of their weights."""
        arch = model.architecture
        sources = [Node("input")]
        for layer in range(arch.n_layers):
            sources += [Node("head", layer, head) for head in range(arch.n_heads)]
            if not arch.attn_only:
                sources.append(Node("mlp", layer))
        targets: list[tuple[Node, Channel]] = []
        for layer in range(arch.n_layers):
            targets += [(Node("head", layer, head), "q") for head in range(arch.n_heads)]
            for channel in "kv":  # keys and values belong to key/value heads (GQA stays grouped)
                targets += [(Node("head", layer, head), channel) for head in range(arch.kv_heads)]
            if not arch.attn_only:
                targets.append((Node("mlp", layer), "mlp"))
        targets.append((Node("logits"), "logits"))
        edges = tuple(
            Edge(source, target, channel)
            for target, channel in targets
            for source in sources
            if _writes_before(source, target, arch.parallel_attn_mlp)
        )
        nodes = (*sources, Node("logits"))
        return cls(
            nodes,
            edges,
            arch.model_name,
            arch.n_layers,
            arch.n_heads,
            {e: i for i, e in enumerate(edges)},
            arch.d_model,
        )

    @property
    def source_nodes(self) -> tuple[Node, ...]:
        """Every node that writes into the residual stream (all but the logits), in order."""
        return self.nodes[:-1]

    @cached_property
    def n_kv_heads(self) -> int:
        """Key/value heads per layer (``n_heads`` unless the model uses grouped-query attention)."""
        return 1 + max(e.target.head for e in self.edges if e.channel == "k")

    @cached_property
    def parallel_attn_mlp(self) -> bool:
        """Whether attention and MLP read the same block input (no head feeds its own
        layer's MLP). ``False`` for attention-only graphs, which have no MLP."""
        has_mlp = any(node.kind == "mlp" for node in self.nodes)
        return has_mlp and not any(
            e.source.kind == "head" and e.target.kind == "mlp" and e.source.layer == e.target.layer
            for e in self.edges
        )

    @cached_property
    def edge_arrays(self) -> tuple[Int[Tensor, " edge"], Int[Tensor, " _edge"], Int[Tensor, " _edge"]]:
        """``(source, pair_edge, pair_target)`` node indices for vectorised graph walks:
        ``source[e]`` is edge ``e``'s source node; each ``(pair_edge[i], pair_target[i])``
        says edge ``pair_edge[i]`` feeds node ``pair_target[i]``. A key or value edge feeds
        every query head of its key/value head's group, any other edge its target alone."""
        index = {node: i for i, node in enumerate(self.nodes)}
        group = self.n_heads // self.n_kv_heads
        pair_edge, pair_target = [], []
        for e, edge in enumerate(self.edges):
            heads = (
                range(edge.target.head * group, (edge.target.head + 1) * group)
                if edge.channel in "kv"
                else None
            )
            for node in [Node("head", edge.target.layer, h) for h in heads] if heads else [edge.target]:
                pair_edge.append(e)
                pair_target.append(index[node])
        source = torch.tensor([index[edge.source] for edge in self.edges], device="cpu")
        return source, torch.tensor(pair_edge, device="cpu"), torch.tensor(pair_target, device="cpu")

    @cached_property
    def channel_tables(self) -> tuple[tuple[int | None, Channel, Int[Tensor, "_head _source"]], ...]:
        """``(layer, channel, edge_ids)`` per destination channel in forward order (``layer``
        is ``None`` for the logits): ``edge_ids[slot, source]`` is the edge from
        ``source_nodes[source]`` into that slot (the head for q/k/v, slot 0 otherwise), or -1."""
        source_index = {node: i for i, node in enumerate(self.source_nodes)}
        tables: dict[tuple[int | None, Channel], dict[tuple[int, int], int]] = {}
        for index, edge in enumerate(self.edges):
            slot = edge.target.head if edge.channel in ("q", "k", "v") else 0
            tables.setdefault((edge.target.layer, edge.channel), {})[(slot, source_index[edge.source])] = (
                index
            )
        result = []
        for (layer, channel), table in tables.items():
            edge_ids = torch.full(
                (1 + max(s for s, _ in table), 1 + max(src for _, src in table)), -1, device="cpu"
            )
            for (slot, source), index in table.items():
                edge_ids[slot, source] = index
            result.append((layer, channel, edge_ids))
        return tuple(result)

    def edges_into(self, target: Node, channel: Channel) -> list[int]:
        """Indices of the edges into one input channel."""
        return [i for i, e in enumerate(self.edges) if e.target == target and e.channel == channel]
