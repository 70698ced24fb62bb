"""Exact ACDC (Conmy et al. 2023, "Towards Automated Circuit Discovery for Mechanistic
Interpretability"): the greedy pass that tries one edge at a time against the current circuit.

Destinations (each head's q/k/v input, each MLP input, the logits) are visited from the logits
backwards, in reverse forward order, and within a destination its incoming edges from the
latest source to the earliest. Each edge is ablated on top of every edge removed so far; if
the mean metric moves by less than ``threshold`` from the current circuit's value, the edge
stays removed and the current value becomes the new one, otherwise it is put back. This is
what the batched variant (``circuits.acdc``) approximates by trying all of one destination's
edges against the same circuit.

Speed without changing the result:

- *Speculative rows*: since most edges are removed, ``rows_per_forward`` candidates run as
  rows of one batched masked forward, row ``r`` removing candidates ``0..r`` together: exactly
  the context the sequential loop would meet if all of them were removed. Results are read in
  order up to the first kept edge; the rows after it assumed its removal and are run again.
  A forward therefore decides one kept edge and every removed edge before it.
- Each forward starts at the destination's block: edges into earlier blocks have not been
  visited yet, so those blocks are the same for every row and for every destination of the
  layer; they run once per layer (the masked prefix of ``patch_edges(start_layer=...)``,
  cached), as do the ablated sources and the clean prefix (once per call).
- A node none of whose outgoing edges is left in the circuit reads nothing that matters: the
  edges into it are removed without a forward (their effect is zero; recorded as 0).

All evaluations run on the masked executor (``mechinterp.patching.masked``, set up as
``circuits.patch_edges`` sets it up). Cost: one forward per kept edge and per visited
destination (up to ``rows_per_forward`` rows each, from the destination's block on).

Example:
    >>> in_circuit, effects = exact_acdc_edges(model, clean, corrupt, graph, metric, threshold=0.05)
    >>> circuit = ALGORITHMS["acdc-exact"](model, pairs, pairs.metric(), graph)
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from circuits.edge_patching import (
    Ablation,
    ablated_outputs,
    check_graph_fits,
    edge_layout,
    first_difference,
)
from circuits.graph import Graph, Node
from mechinterp.dims import AttentionMask, Tokens
from mechinterp.metrics import PositionalMetric
from mechinterp.patching.base_run import BaseRun
from mechinterp.patching.masked import masked_prefix, run_masked
from mechinterp.patching.rows import RowSet


class _Evaluator:
    """``patch_edges`` for a sequence of calls whose edges into blocks before the entry layer
    stay unpatched: the ablated sources, the clean prefix and each layer's masked prefix are
    computed once."""

    def __init__(self, model, clean, corrupt, graph, metric, ablation, attention_mask):
        check_graph_fits(model, graph)
        self.model, self.graph, self.metric = model, graph, metric
        clean, corrupt = clean.to(model.device), corrupt.to(model.device)
        mask = torch.ones_like(clean) if attention_mask is None else attention_mask.to(model.device)
        self.ablated = ablated_outputs(model, graph, clean, corrupt, ablation, mask)
        self.positions = metric.positions.to(model.device)
        self.start = min(first_difference(clean, corrupt, ablation), int(self.positions.min()))
        self.base = BaseRun.prefix(model, clean, mask, self.start)
        self.full_layout = edge_layout(model, graph)
        self.layers: dict[int, tuple] = {}

    def _layer(self, layer: int, mask: Tensor) -> tuple:
        if layer not in self.layers:
            layout = edge_layout(self.model, self.graph, layer)
            fixed, entering = None, None
            if layer > 0:
                before = layout.edges_before(layer)
                if bool(mask[before].any()):
                    raise RuntimeError(f"edges into blocks before {layer} were removed before it was visited")
                residual, fixed = masked_prefix(
                    self.model,
                    self.full_layout,
                    mask.to(self.model.device, self.model.dtype),
                    self.base,
                    ablated=self.ablated,
                    start=self.start,
                    stop=layer,
                    n_before=layout.n_fixed,
                )
                entering = {layer: residual}
            self.layers[layer] = (layout, fixed, entering)
        return self.layers[layer]

    def __call__(self, masks: Tensor, layer: int) -> list[float]:
        """Mean metric of each row of ``masks`` ``[row, edge]``, entering at ``layer``."""
        layout, fixed, entering = self._layer(layer, masks[0])
        model, metric = self.model, self.metric

        def score(residual: Tensor, examples: Tensor) -> Tensor:
            return metric.score(model.unembed(model.ln_final(residual[:, None]))[:, 0].float(), examples)

        values, _ = run_masked(
            model,
            layout,
            masks.to(model.device, model.dtype),
            self.base,
            RowSet(
                layer=torch.full((len(masks),), layer, dtype=torch.long, device="cpu"),
                start=torch.full((len(masks),), self.start, dtype=torch.long, device="cpu"),
            ),
            read=self.positions,
            score=score,
            ablated=self.ablated[layout.n_fixed :],
            fixed=fixed,
            entering=entering,
            description="exact ACDC",
        )
        return values.float().mean(-1).tolist()


def visiting_order(graph: Graph) -> list[tuple[Node, str, list[int]]]:
    """``(target, channel, edge indices)`` per destination, from the logits backwards; the
    indices run from the latest source to the earliest."""
    destinations: dict[tuple[Node, str], list[int]] = {}
    for index, edge in enumerate(graph.edges):  # grouped by destination, in forward order
        destinations.setdefault((edge.target, edge.channel), []).append(index)
    return [(target, channel, indices[::-1]) for (target, channel), indices in reversed(destinations.items())]


def _readers(graph: Graph, target: Node, channel: str) -> list[Node]:
    """The nodes whose output depends on this destination input (a key/value head serves its
    group of query heads)."""
    if channel in ("k", "v"):
        group = graph.n_heads // graph.n_kv_heads
        return [Node("head", target.layer, h) for h in range(target.head * group, (target.head + 1) * group)]
    return [target]


@torch.no_grad()
def exact_acdc_edges(
    model,
    clean: Tokens,
    corrupt: Tokens,
    graph: Graph,
    metric: PositionalMetric,
    *,
    threshold: float = 0.05,
    ablation: Ablation = "resample",
    attention_mask: AttentionMask | None = None,
    rows_per_forward: int = 16,
    progress: bool = True,
) -> tuple[Bool[Tensor, " edge"], Float[Tensor, " edge"]]:
    """``(in_circuit, effects)`` ``[edge]``: the edges exact ACDC keeps and each edge's
    ``|change|`` of the mean metric when it was tried (see the module docstring).

    Raises:
        ValueError: a negative ``threshold`` or ``rows_per_forward`` below 1.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if rows_per_forward < 1:
        raise ValueError(f"rows_per_forward must be at least 1, got {rows_per_forward}")
    n_edges = len(graph.edges)
    removed = torch.zeros(n_edges)
    effects = torch.zeros(n_edges)
    source_of = torch.tensor([graph.source_nodes.index(e.source) for e in graph.edges])
    node_index = {node: i for i, node in enumerate(graph.source_nodes)}
    mean_values = _Evaluator(model, clean, corrupt, graph, metric, ablation, attention_mask)
    current = mean_values(removed[None], graph.n_layers - 1)[0]
    order = visiting_order(graph)
    for target, channel, candidates in tqdm(order, desc="exact ACDC", leave=False, disable=not progress):
        if target.kind != "logits":
            live_out = torch.zeros(len(graph.source_nodes), dtype=torch.bool)
            live_out[source_of[removed == 0]] = True
            if not any(bool(live_out[node_index[node]]) for node in _readers(graph, target, channel)):
                removed[candidates] = 1  # nothing downstream reads this node: zero effect
                continue
        start_layer = graph.n_layers - 1 if target.layer is None else target.layer
        first = 0
        while first < len(candidates):
            chunk = candidates[first : first + rows_per_forward]
            masks = removed.repeat(len(chunk), 1)
            for row in range(len(chunk)):
                masks[row, chunk[: row + 1]] = 1  # row r: candidates 0..r removed together
            values = mean_values(masks, start_layer)
            for row, edge in enumerate(chunk):
                change = abs(values[row] - current)
                effects[edge] = change
                first += 1
                if change < threshold:
                    removed[edge] = 1
                    current = values[row]
                else:
                    break  # kept: later rows assumed its removal, run them again
    return removed == 0, effects
