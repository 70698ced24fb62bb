"""Position-aware circuits: every edge scored per span of token positions.

A position-free circuit says that head ``a3.h1`` feeds ``m5``; a position-aware one says
where in the prompt it does (Haklay et al. 2025, "Position-aware Automatic Circuit
Discovery"): at the second subject mention, at the final token. Here an edge at a span is
the edge restricted to that span's positions: the destination reads, at each position ``p``
of the span, the source's output at ``p`` (the residual stream carries each position's
sum; heads move information between positions inside themselves, as nodes).

Spans (``mechinterp.data.PositionSpans``) are single positions (``per_position``) or
labelled parts of the prompts that may sit at different positions in different examples
(``ioi_pairs`` labels ``io``, ``s1``, ``s2``, ``end``, ``other``). Scores are ``[edge,
span]``:

- ``"eap"``, ``"eap-ig"``, ``"relp"``: the gradient products of ``circuits.eap`` restricted
  to each span's positions; summed over spans they are the position-free scores.
- ``"edge-patching"``: exact, one masked row per (edge, span), on the same batched masked
  executor as every edge patch (``patch_edges`` with ``spans``).

A ``PositionalCircuit`` keeps the top edges by magnitude; ``masks()`` feeds ``patch_edges``
to evaluate it, ``position_free()`` collapses it to a ``Circuit``, and
``to_neuronpedia_dict`` exports it with each node at its span's position (``ctx_idx``).

Example:
    >>> pairs = ioi_pairs(model, 8)                      # pairs.spans: io, s1, s2, end, other
    >>> circuit = positional_scores(model, pairs, pairs.metric(), Graph.from_model(model), method="eap")
    >>> circuit.top_n(50).edges_in_graph()[:2]           # (Edge, span label) pairs
    >>> positional_faithfulness(model, pairs, circuit.top_n(50), pairs.metric())
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from circuits.circuit import Circuit
from circuits.eap import eap_ig_scores, eap_scores, relp_scores
from circuits.edge_patching import Ablation, patch_edges
from circuits.graph import Edge, Graph, Node
from circuits.prompt import prompt_record
from mechinterp.data.pairs import PositionSpans
from mechinterp.metrics import PositionalMetric

PositionalMethod = Literal["eap", "eap-ig", "relp", "edge-patching"]
POSITIONAL_METHODS: tuple[str, ...] = ("eap", "eap-ig", "relp", "edge-patching")


@dataclass(frozen=True, eq=False)
class PositionalCircuit:
    """``scores`` ``[edge, span]`` (estimated change of the mean metric when the edge carries
    the ablated source at that span's positions) and ``in_graph`` ``[edge, span]``."""

    graph: Graph
    spans: PositionSpans
    scores: Float[Tensor, "edge span"]
    in_graph: Bool[Tensor, "edge span"] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.graph.edges), self.spans.n_spans)
        if tuple(self.scores.shape) != shape:
            raise ValueError(f"scores must be [edge, span] = {list(shape)}, got {list(self.scores.shape)}")
        if self.in_graph is None:
            object.__setattr__(self, "in_graph", torch.ones(shape, dtype=torch.bool))

    @property
    def n_edges(self) -> int:
        """In-graph (edge, span) pairs."""
        return int(self.in_graph.sum())

    def edges_in_graph(self) -> list[tuple[Edge, str]]:
        """The in-graph edges with their span labels, in edge order."""
        pairs = self.in_graph.nonzero().tolist()
        return [(self.graph.edges[e], self.spans.labels[s]) for e, s in pairs]

    def top_n(self, n: int) -> PositionalCircuit:
        """Keep the ``n`` (edge, span) pairs with the largest absolute scores."""
        if not 0 <= n <= self.scores.numel():
            raise ValueError(f"n must be in 0..{self.scores.numel()}, got {n}")
        keep = torch.zeros(self.scores.numel(), dtype=torch.bool)
        keep[self.scores.abs().flatten().topk(n).indices] = True
        return replace(self, in_graph=keep.view(self.scores.shape))

    def threshold(self, value: float) -> PositionalCircuit:
        """Keep the (edge, span) pairs whose absolute score is at least ``value``."""
        return replace(self, in_graph=self.scores.abs() >= value)

    def masks(self) -> Float[Tensor, "edge span"]:
        """``patch_edges`` weights for this circuit: 1 (ablated) off the circuit, 0 on it."""
        return (~self.in_graph).float()

    def node_scores(self) -> dict[tuple[Node, str], float]:
        """A node-level view: each source node's summed outgoing edge scores at each span
        (the estimated effect of patching the node's output at that span's positions)."""
        totals = torch.zeros(len(self.graph.source_nodes), self.spans.n_spans, dtype=torch.float64)
        source, _, _ = self.graph.edge_arrays
        totals.index_add_(0, source, self.scores.double())
        return {
            (node, label): float(totals[i, s])
            for i, node in enumerate(self.graph.source_nodes)
            for s, label in enumerate(self.spans.labels)
        }

    def position_free(self) -> Circuit:
        """The position-free circuit: scores summed over spans, an edge kept if it is kept
        at any span."""
        return Circuit(self.graph, self.scores.sum(1), self.in_graph.any(1), metadata=dict(self.metadata))


def _spans_of(data, spans: PositionSpans | None) -> PositionSpans:
    if spans is None:
        spans = getattr(data, "spans", None)
    if spans is None:
        return PositionSpans.per_position(*data.clean.shape)
    if tuple(spans.ids.shape) != tuple(data.clean.shape):
        raise ValueError(
            f"spans label {tuple(spans.ids.shape)} positions but the tokens are {tuple(data.clean.shape)}"
        )
    return spans


@torch.no_grad()
def _edge_patching_scores(
    model, data, metric, graph: Graph, spans: PositionSpans, ablation: Ablation, rows_per_forward: int
) -> Tensor:
    """Exact scores ``[edge, span]``: one masked row per (edge, span) present in the data."""
    n_edges, n_spans = len(graph.edges), spans.n_spans
    run = dict(ablation=ablation, attention_mask=getattr(data, "attention_mask", None), spans=spans)
    base = patch_edges(
        model, data.clean, data.corrupt, graph, torch.zeros(1, n_edges, n_spans), metric, **run
    )
    present = torch.unique(spans.ids).tolist()
    pairs = torch.tensor([(e, s) for s in present for e in range(n_edges)], dtype=torch.long).view(-1, 2)
    scores = torch.zeros(n_edges, n_spans)
    for first in tqdm(range(0, len(pairs), rows_per_forward), desc="positional edge patching", leave=False):
        chunk = pairs[first : first + rows_per_forward]
        masks = torch.zeros(len(chunk), n_edges, n_spans)
        masks[torch.arange(len(chunk)), chunk[:, 0], chunk[:, 1]] = 1
        values = patch_edges(model, data.clean, data.corrupt, graph, masks, metric, **run)
        scores[chunk[:, 0], chunk[:, 1]] = (values.float().mean(-1) - base.float().mean()).cpu()
    return scores


def positional_scores(
    model,
    data,
    metric: PositionalMetric,
    graph: Graph,
    *,
    method: str = "eap",  # one of POSITIONAL_METHODS (checked below, with a clearer message)
    spans: PositionSpans | None = None,
    steps: int = 5,
    ablation: Ablation = "resample",
    rows_per_forward: int = 64,
) -> PositionalCircuit:
    """Score every edge at every span (see the module docstring); all pairs in graph.

    Args:
        data: clean/corrupt pairs (``PromptPairs`` or ``PairedData``).
        spans: the position axis; default ``data.spans`` (IOI pairs have them), else one span
            per position.
        method: ``"eap"``, ``"eap-ig"`` (``steps`` points), ``"relp"`` or exact
            ``"edge-patching"`` (``ablation``, ``rows_per_forward`` rows per forward).

    Example:
        >>> circuit = positional_scores(model, pairs, pairs.metric(), graph, method="edge-patching")
    """
    if method not in POSITIONAL_METHODS:
        raise ValueError(f"method must be one of {POSITIONAL_METHODS}, got {method!r}")
    spans = _spans_of(data, spans)
    batch = data.clean.shape[0]
    mask = getattr(data, "attention_mask", None)
    gradient = dict(attention_mask=mask, spans=spans)
    if method == "eap":
        scores = eap_scores(model, data.clean, data.corrupt, graph, metric, **gradient) / batch
    elif method == "relp":
        scores = relp_scores(model, data.clean, data.corrupt, graph, metric, **gradient) / batch
    elif method == "eap-ig":
        scores = (
            eap_ig_scores(model, data.clean, data.corrupt, graph, metric, steps=steps, **gradient) / batch
        )
    else:
        scores = _edge_patching_scores(model, data, metric, graph, spans, ablation, rows_per_forward)
    config = (
        {"steps": steps}
        if method == "eap-ig"
        else {"ablation": ablation}
        if method == "edge-patching"
        else {}
    )
    metadata = {
        "algorithm": f"positional-{method}",
        "config": config,
        "spans": list(spans.labels),
        "prompt": prompt_record(model, data, metric),
    }
    return PositionalCircuit(graph, spans, scores.float().cpu(), metadata=metadata)


@torch.no_grad()
def positional_faithfulness(
    model, data, circuit: PositionalCircuit, metric: PositionalMetric, *, ablation: Ablation = "resample"
) -> float:
    """``(M(circuit) - M(ablated)) / (M(clean) - M(ablated))`` of the mean metric, where the
    circuit run ablates every (edge, span) pair off the circuit (one batched forward of
    three rows: everything ablated, the circuit, nothing ablated)."""
    spans = circuit.spans
    masks = torch.stack(
        [torch.ones_like(circuit.masks()), circuit.masks(), torch.zeros_like(circuit.masks())]
    )
    values = patch_edges(
        model,
        data.clean,
        data.corrupt,
        circuit.graph,
        masks,
        metric,
        ablation=ablation,
        attention_mask=getattr(data, "attention_mask", None),
        spans=spans,
    )
    ablated, kept, clean = values.float().mean(-1).tolist()
    return (kept - ablated) / (clean - ablated) if clean != ablated else float("nan")
