"""Turning the logits of patched rows into metric values.

Two kinds of metric reach the engine. A ``PositionalMetric`` reads one position per
example, so each patched row needs logits at that position only, and a row whose patch
starts after that position cannot change it at all. Any other callable (the
TransformerLens convention) receives full logits ``[batch, pos, d_vocab]`` per cell: rows
are assembled into per-cell logits, the positions a patch cannot reach filled from the
unpatched run.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mechinterp.metrics import MetricFn, PositionalMetric


class PositionalScorer:
    """Scores rows of a ``PositionalMetric``; values are per example."""

    per_example = True

    def __init__(self, metric: PositionalMetric, batch: int, n_pos: int):
        positions = torch.as_tensor(metric.positions, dtype=torch.long, device="cpu")
        if positions.shape != (batch,):
            raise ValueError(
                f"metric reads {tuple(positions.shape)} positions, expected one per example ({batch})"
            )
        if positions.min() < 0 or positions.max() >= n_pos:
            raise ValueError(
                f"metric positions {positions.tolist()} fall outside the {n_pos} prompt positions"
            )
        self.metric = metric
        self.positions = positions

    def can_change(self, example: int, first_position: int) -> bool:
        return bool(self.positions[example] >= first_position)

    def logit_positions(self, examples: Tensor, start: int) -> Tensor:
        return (self.positions[examples.cpu()] - start)[:, None]

    def run_values(self, logits: Tensor) -> Tensor:
        """Per-example values of a whole run's logits ``[batch, pos, d_vocab]``."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        return self._values(logits[rows, self.positions.to(logits.device)], rows)

    def row_values(self, logits: Tensor, examples: Tensor) -> Tensor:
        return self._values(logits[:, 0], examples)

    def _values(self, logits: Tensor, examples: Tensor) -> Tensor:
        values = self.metric.score(logits.float(), examples)  # metrics in float32, whatever the model dtype
        if values.shape != (logits.shape[0],):
            raise ValueError(f"metric score must give one value per row, got shape {tuple(values.shape)}")
        return values.detach().float().cpu()


class FullLogitScorer:
    """Calls TransformerLens-style metric functions on full logits, one cell at a time.

    ``reduce``: ``"scalar"`` (each metric returns a scalar), ``"mean"`` (each returns
    ``[batch]``, averaged) or ``"none"`` (``[batch]``, kept per example). A mapping of
    metrics gives a leading metric axis.
    """

    def __init__(self, metric: MetricFn | Mapping[str, MetricFn], batch: int, reduce: str = "scalar"):
        if reduce not in ("scalar", "mean", "none"):
            raise ValueError(f"reduce must be 'scalar', 'mean' or 'none', got {reduce!r}")
        self.metrics = dict(metric) if isinstance(metric, Mapping) else {"metric": metric}
        if not self.metrics:
            raise ValueError("the metric mapping is empty")
        self.multi = isinstance(metric, Mapping)
        self.batch = batch
        self.reduce = reduce
        self.per_example = reduce == "none"

    def can_change(self, example: int, first_position: int) -> bool:
        return True

    def logit_positions(self, examples: Tensor, start: int) -> None:
        return None

    def run_values(self, logits: Tensor) -> Tensor:
        """``[metric?, batch?]`` values of full logits ``[batch, pos, d_vocab]``."""
        values = []
        for name, fn in self.metrics.items():
            out = torch.as_tensor(fn(logits.float()), device="cpu").detach().float()
            if self.reduce == "scalar" and out.ndim != 0:
                raise ValueError(
                    f"metric {name!r} must return a scalar, got shape {tuple(out.shape)}; return a [batch] "
                    "tensor and pass reduce='mean' or reduce='none' for per-example values"
                )
            if self.reduce != "scalar" and out.shape != (self.batch,):
                raise ValueError(
                    f"metric {name!r} must return a [batch] tensor of length {self.batch} with "
                    f"reduce={self.reduce!r}, got shape {tuple(out.shape)}"
                )
            values.append(out.mean() if self.reduce == "mean" else out)
        return torch.stack(values) if self.multi else values[0]
