"""Faithfulness: how much of the model's behaviour a circuit keeps.

Every edge outside the circuit is ablated (``"resample"``: it carries the corrupted source;
``"zero"``; ``"mean"``: the source's clean output averaged over the batch), so the circuit
alone has to produce the metric. Faithfulness is normalised:
``(circuit - all edges patched) / (full model - all edges patched)``: 1 = as good as the
model, 0 = no better than the corrupted run. A faithfulness curve evaluates the circuits of
many edge counts as rows of one batched forward; its area is the mean over the curve's
points of the normalised value (x = fraction of edges kept, trapezoid rule).

Against a known circuit (IOI, greater-than, induction heads), ``roc_against`` ranks edges or
nodes by score and gives the ROC curve and its AUC, the comparison ACDC (Conmy et al. 2023)
and EAP (Syed et al. 2023) report.

Example:
    >>> curve = faithfulness_curve(model, clean, corrupt, circuit, metric, counts=range(0, 400, 20))
    >>> curve.area
    >>> roc_against(circuit, ["a0.h1", "a1.h2"], level="node").auc
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuits.circuit import Circuit
from circuits.edge_patching import Ablation, patch_edges
from mechinterp.dims import AttentionMask, Tokens
from mechinterp.metrics import PositionalMetric


@dataclass(frozen=True, eq=False)
class CircuitScore:
    """One circuit's mean metric next to the full model's and the fully ablated model's."""

    value: float
    full_model: float
    all_ablated: float
    n_edges: int
    ablation: str

    @property
    def faithfulness(self) -> float:
        """``(circuit - all ablated) / (full model - all ablated)``."""
        return (self.value - self.all_ablated) / (self.full_model - self.all_ablated)


@dataclass(frozen=True, eq=False)
class FaithfulnessCurve:
    """Edge counts, raw metric values (example mean) and normalised faithfulness per count."""

    counts: list[int]
    values: Float[Tensor, " point"]
    faithfulness: Float[Tensor, " point"]
    full_model: float
    all_patched: float
    n_edges_total: int
    ablation: str = "resample"

    @property
    def area(self) -> float:
        """Trapezoid area under faithfulness vs fraction of edges kept."""
        x = torch.tensor(self.counts, dtype=torch.float64) / self.n_edges_total
        return float(torch.trapezoid(self.faithfulness.double(), x))


def _reference_rows(masks: Tensor) -> Tensor:
    """Append the full model (nothing patched) and the fully ablated model (everything)."""
    n_edges = masks.shape[1]
    return torch.cat([masks, torch.zeros(1, n_edges), torch.ones(1, n_edges)])


@torch.no_grad()
def evaluate_circuit(
    model,
    clean: Tokens,
    corrupt: Tokens,
    circuit: Circuit,
    metric: PositionalMetric,
    *,
    ablation: Ablation = "resample",
    attention_mask: AttentionMask | None = None,
) -> CircuitScore:
    """The circuit's metric with every edge outside it ablated, in one batched forward with
    the full model and the fully ablated model.

    Example:
        >>> evaluate_circuit(model, clean, corrupt, circuit, metric, ablation="mean").faithfulness
    """
    masks = _reference_rows((~circuit.in_graph).float()[None])
    values = patch_edges(
        model, clean, corrupt, circuit.graph, masks, metric, ablation=ablation, attention_mask=attention_mask
    )
    value, full, ablated = values.float().mean(-1).tolist()
    return CircuitScore(value, full, ablated, circuit.n_edges, ablation)


@torch.no_grad()
def faithfulness_curve(
    model,
    clean: Tokens,
    corrupt: Tokens,
    circuit: Circuit,
    metric: PositionalMetric,
    counts: Sequence[int],
    *,
    ablation: Ablation = "resample",
    attention_mask: AttentionMask | None = None,
) -> FaithfulnessCurve:
    """Faithfulness of the top-``n`` edges (by ``circuit.scores``) for every ``n`` in
    ``counts``, all in one batched forward (plus the two reference rows)."""
    graph = circuit.graph
    n_edges = len(graph.edges)
    counts = sorted(int(c) for c in counts)
    if not counts or counts[0] < 0 or counts[-1] > n_edges:
        raise ValueError(
            f"counts must be a non-empty list of edge counts in 0..{n_edges}, got {counts[:5]}..."
        )
    order = circuit.scores.abs().argsort(descending=True)
    masks = torch.ones(len(counts), n_edges)  # 1 = patched (outside the circuit)
    for row, count in enumerate(counts):
        masks[row, order[:count]] = 0
    values = patch_edges(
        model,
        clean,
        corrupt,
        graph,
        _reference_rows(masks),
        metric,
        ablation=ablation,
        attention_mask=attention_mask,
    )
    values = values.float().mean(-1)
    full_model, all_patched = float(values[-2]), float(values[-1])
    faithfulness = (values[:-2] - all_patched) / (full_model - all_patched)
    return FaithfulnessCurve(counts, values[:-2], faithfulness, full_model, all_patched, n_edges, ablation)


@dataclass(frozen=True, eq=False)
class RocCurve:
    """ROC of a circuit's ranking against a reference circuit (all tensors float64).

    ``fpr``, ``tpr`` and ``thresholds`` are ``[point]``, from the strictest threshold (``inf``:
    nothing selected, the point (0, 0)) to the loosest (everything selected, (1, 1)); one point
    per distinct score, so tied items enter together. ``auc`` is the trapezoid area under the
    curve: the probability that a random reference item outranks a random other item, ties
    counting one half.
    """

    fpr: Float[Tensor, " point"]
    tpr: Float[Tensor, " point"]
    thresholds: Float[Tensor, " point"]
    auc: float
    n_positive: int
    n_negative: int


def roc_curve(scores: Float[Tensor, " item"], labels: Bool[Tensor, " item"]) -> RocCurve:
    """ROC of ranking ``scores`` ``[item]`` (higher = more likely in the reference) against
    boolean ``labels`` ``[item]``.

    Example:
        >>> roc = roc_curve(torch.tensor([3.0, 2.0, 2.0, 1.0]), torch.tensor([True, True, False, False]))
        >>> roc.tpr.tolist(), roc.fpr.tolist(), roc.auc
        ([0.0, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0], 0.875)
    """
    n_positive, n_negative = int(labels.sum()), int((~labels).sum())
    if n_positive == 0 or n_negative == 0:
        raise ValueError(
            f"a ROC curve needs items in and out of the reference; got {n_positive} in and {n_negative} out"
        )
    scores = scores.double()
    order = scores.argsort(descending=True)
    ranked, hits = scores[order], labels[order].double()
    last_of_tie = torch.ones(len(ranked), dtype=torch.bool)  # where the next item has a lower score
    last_of_tie[:-1] = ranked[1:] < ranked[:-1]
    true_positives = hits.cumsum(0)[last_of_tie]
    false_positives = (1 - hits).cumsum(0)[last_of_tie]
    start = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([start, true_positives / n_positive])
    fpr = torch.cat([start, false_positives / n_negative])
    thresholds = torch.cat([torch.tensor([torch.inf], dtype=torch.float64), ranked[last_of_tie]])
    return RocCurve(fpr, tpr, thresholds, float(torch.trapezoid(tpr, fpr)), n_positive, n_negative)


def _check_names(reference: set[str], valid: list[str], level: str) -> None:
    """Raise listing a few unknown names and, for each, the closest valid ones."""
    unknown = sorted(reference - set(valid))
    if not unknown:
        return
    hints = "; ".join(
        f"{name!r} (closest: {', '.join(difflib.get_close_matches(name, valid, n=3, cutoff=0.5)) or 'none'})"
        for name in unknown[:3]
    )
    raise ValueError(
        f"{len(unknown)} {level} name(s) in the reference are not in the graph: {hints}"
        + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
    )


def roc_against(
    circuit: Circuit, reference: Iterable[str], *, level: Literal["edge", "node"] = "edge"
) -> RocCurve:
    """ROC / AUC of ``circuit``'s ranking against a reference circuit (ACDC, EAP and
    auto-circuit compare discovery methods this way).

    ``level="edge"``: ``reference`` names edges (EAP-IG names, ``a3.h1->m5``,
    ``input->a0.h0<q>``) and edges are ranked by ``|score|``. ``level="node"``: ``reference``
    names heads and MLPs (``a1.h3``, ``m2``) and each is ranked by its largest incident
    ``|score|``, the order in which nodes join ``circuit.top_n(n)`` as ``n`` grows. ``input``
    and ``logits`` belong to every circuit and are not ranked; naming them is allowed.

    Example:
        >>> roc = roc_against(circuit, ["a0.h1", "a1.h2", "m0"], level="node")
        >>> roc.auc
    """
    if isinstance(reference, str):
        raise TypeError(f"reference must be a collection of names, not the single string {reference!r}")
    reference = set(reference)
    graph = circuit.graph
    magnitude = circuit.scores.detach().double().abs().cpu()
    if level == "edge":
        names = [edge.name for edge in graph.edges]
        _check_names(reference, names, level)
        scores = magnitude
    elif level == "node":
        _check_names(reference, [node.name for node in graph.nodes], level)
        components = [node for node in graph.nodes if node.kind in ("head", "mlp")]
        strongest = dict.fromkeys(components, 0.0)
        for edge, value in zip(graph.edges, magnitude.tolist(), strict=True):
            for node in (edge.source, edge.target):
                if node in strongest:
                    strongest[node] = max(strongest[node], value)
        names = [node.name for node in components]
        scores = torch.tensor([strongest[node] for node in components], dtype=torch.float64)
    else:
        raise ValueError(f"level must be 'edge' or 'node', got {level!r}")
    labels = torch.tensor([name in reference for name in names], dtype=torch.bool)
    return roc_curve(scores, labels)
