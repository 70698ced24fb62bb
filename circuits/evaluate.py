"""Faithfulness: how much of the model's behaviour a circuit keeps.

Every edge outside the circuit is patched (resample ablation: it carries the corrupted
source), so the circuit alone has to produce the metric. Faithfulness is normalised:
``(circuit - all edges patched) / (full model - all edges patched)``: 1 = as good as the
model, 0 = no better than the corrupted run. A faithfulness curve evaluates the circuits of
many edge counts as rows of one batched forward; its area is the mean over the curve's
points of the normalised value (x = fraction of edges kept, trapezoid rule).

Example:
    >>> curve = faithfulness_curve(model, clean, corrupt, circuit, metric, counts=range(0, 400, 20))
    >>> curve.area
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.circuit import Circuit
from circuits.edge_patching import patch_edges
from mechinterp.metrics import PositionalMetric


@dataclass(frozen=True, eq=False)
class FaithfulnessCurve:
    """Edge counts, raw metric values (example mean) and normalised faithfulness per count."""

    counts: list[int]
    values: Tensor
    faithfulness: Tensor
    full_model: float
    all_patched: float
    n_edges_total: int

    @property
    def area(self) -> float:
        """Trapezoid area under faithfulness vs fraction of edges kept."""
        x = torch.tensor(self.counts, dtype=torch.float64) / self.n_edges_total
        return float(torch.trapezoid(self.faithfulness.double(), x))


@torch.no_grad()
def faithfulness_curve(
    model, clean: Tensor, corrupt: Tensor, circuit: Circuit, metric: PositionalMetric, counts: Sequence[int]
) -> FaithfulnessCurve:
    """Faithfulness of the top-``n`` edges (by ``circuit.scores``) for every ``n`` in
    ``counts``, all in one batched forward (plus the two reference rows)."""
    graph = circuit.graph
    counts = sorted(int(c) for c in counts)
    n_edges = len(graph.edges)
    order = circuit.scores.abs().argsort(descending=True)
    masks = torch.ones(len(counts) + 2, n_edges)  # 1 = patched (outside the circuit)
    for row, count in enumerate(counts):
        masks[row, order[:count]] = 0
    masks[-2] = 0  # full model
    values = patch_edges(model, clean, corrupt, graph, masks, metric).float().mean(-1)
    full_model, all_patched = float(values[-2]), float(values[-1])
    faithfulness = (values[:-2] - all_patched) / (full_model - all_patched)
    return FaithfulnessCurve(counts, values[:-2], faithfulness, full_model, all_patched, n_edges)
