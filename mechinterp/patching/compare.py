"""Compare two patching maps of the same grid (exact vs attribution, or two methods).

Example:
    >>> comparison = compare(exact, atp, top_k=10)
    >>> comparison.spearman, comparison.top_k_overlap
    >>> comparison.disagreements.head()
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechinterp.patching.result import PatchResult


def effects(result: PatchResult) -> Tensor:
    """Example-mean change of the metric caused by each cell: ``mean(values) - mean(base)``."""
    return (result.mean() - result.base.float().mean()).float()


def cell_labels(result: PatchResult) -> list[str]:
    """One readable label per cell, row-major (``"L3 H7"``, ``"L0 5: John"``)."""
    return [" ".join(combo) for combo in itertools.product(*(result.labels[a] for a in result.axes))]


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two 1-D tensors."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = a.norm() * b.norm()
    return float((a @ b) / denominator) if denominator > 0 else float("nan")


def _ranks(values: Tensor) -> Tensor:
    """Average ranks (ties share their mean rank), as Spearman's correlation needs."""
    return torch.tensor(pd.Series(values.numpy()).rank(method="average").to_numpy(), dtype=torch.float64)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties get average ranks)."""
    return pearson(_ranks(a), _ranks(b))


@dataclass(frozen=True, eq=False)
class Comparison:
    """Agreement between two maps of the same cells.

    Attributes:
        pearson, spearman: correlations of the compared quantities over all cells.
        top_k_overlap: fraction of the ``top_k`` cells by magnitude that both maps share.
        disagreements: cells sorted by how far apart their ranks are (largest first).
        reference, estimate: the compared per-cell quantities; ``labels`` name the cells.
    """

    pearson: float
    spearman: float
    top_k: int
    top_k_overlap: float
    disagreements: pd.DataFrame
    reference: Float[Tensor, " cell"]
    estimate: Float[Tensor, " cell"]
    labels: list[str]
    names: tuple[str, str]


def compare(
    reference: PatchResult,
    estimate: PatchResult,
    *,
    top_k: int = 10,
    by: Literal["effect", "magnitude"] = "effect",
    names: tuple[str, str] = ("exact", "estimate"),
) -> Comparison:
    """Correlations, top-k overlap and worst disagreements between two maps.

    ``by="effect"`` compares signed effects; ``"magnitude"`` compares their absolute values
    (how AtP* is meant to be used: ranking cells by how much they matter).
    """
    if reference.axes != estimate.axes or reference.mean().shape != estimate.mean().shape:
        raise ValueError(
            f"maps differ: {reference.axes} {tuple(reference.mean().shape)} vs "
            f"{estimate.axes} {tuple(estimate.mean().shape)}"
        )
    a, b = effects(reference).reshape(-1).cpu(), effects(estimate).reshape(-1).cpu()
    if by == "magnitude":
        a, b = a.abs(), b.abs()
    k = min(top_k, a.numel())
    top_a = set(a.abs().topk(k).indices.tolist())
    top_b = set(b.abs().topk(k).indices.tolist())
    rank_a, rank_b = _ranks(-a.abs()), _ranks(-b.abs())
    labels = cell_labels(reference)
    frame = pd.DataFrame(
        {
            "cell": labels,
            names[0]: a.numpy(),
            names[1]: b.numpy(),
            f"rank_{names[0]}": rank_a.numpy(),
            f"rank_{names[1]}": rank_b.numpy(),
        }
    )
    frame["rank_gap"] = (frame[f"rank_{names[0]}"] - frame[f"rank_{names[1]}"]).abs()
    return Comparison(
        pearson=pearson(a, b),
        spearman=spearman(a, b),
        top_k=k,
        top_k_overlap=len(top_a & top_b) / k if k else float("nan"),
        disagreements=frame.sort_values("rank_gap", ascending=False).reset_index(drop=True),
        reference=a,
        estimate=b,
        labels=labels,
        names=names,
    )
