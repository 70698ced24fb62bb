"""MIB's circuit metrics: faithfulness over a grid of circuit sizes, and its areas CPR and CMD.

The circuit-localization track of the Mechanistic Interpretability Benchmark (Mueller et al.
2025, "MIB: A Mechanistic Interpretability Benchmark"; code ``hannamw/MIB-circuit-track``,
``MIB_circuit_track/evaluation.py:evaluate_area_under_curve``) scores a method's edge scores,
not one circuit. For every fraction ``k`` of the grid ``MIB_GRID`` = 0.1 %, 0.2 %, 0.5 %, 1 %,
2 %, 5 %, 10 %, 20 %, 50 %, 100 % of the graph's edges it keeps the ``int(k * n_edges)``
top-scoring edges, prunes edges off input-to-logits paths, ablates everything else and
measures the faithfulness

    f(k) = (m(C_k) - m(empty)) / (m(full model) - m(empty))

(``m``: the task metric averaged over examples; the empty circuit is every edge ablated,
the corrupted run under resample ablation). The areas are trapezoids over the fraction
``k`` itself (linear axis, from 0.001 to 1, the grid's own spacing):

- CPR, circuit performance ratio: the area under ``f`` (higher is better);
- CMD, circuit-model distance: the area under ``|1 - f|`` (lower is better).

MIB reads CPR from the scores ranked by sign (the edges most helpful to the task first) and
CMD from scores ranked by magnitude (``absolute=True``); ``compare_methods`` does the same.
Our scores are the estimated change of the metric when an edge is ablated, so an edge that
helps the task has a *negative* score: the signed ranking is ``-score``, descending (MIB's
attribution metric is the negated logit difference, the same order). Methods whose scores
are magnitudes only (ACDC's ``|change|``, marked ``metadata["scores"] == "magnitude"``) are
ranked by magnitude for both.

Every grid point runs as a row of one batched masked forward (``circuits.patch_edges``), with
the full model and the empty circuit.

Example:
    >>> circuit = ALGORITHMS["eap"](model, pairs, pairs.metric(), graph)
    >>> curve = mib_curve(model, pairs, pairs.metric(), circuit)
    >>> curve.cpr, curve.cmd
    >>> table = compare_methods(model, pairs, pairs.metric(), graph, methods=["eap", "eap-ig"])
    >>> table.to_frame()
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from circuits.algorithms import ALGORITHMS
from circuits.circuit import Circuit
from circuits.edge_patching import Ablation, patch_edges
from circuits.graph import Graph
from mechinterp.metrics import PositionalMetric

MIB_GRID: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""MIB's circuit sizes, as fractions of the graph's edges."""


def mib_areas(
    fractions: Sequence[float] | Float[Tensor, " point"],
    faithfulness: Sequence[float] | Float[Tensor, " point"],
) -> tuple[float, float]:
    """``(CPR, CMD)``: trapezoid areas under ``f`` and under ``|1 - f|`` over ``fractions``.

    Example:
        >>> mib_areas([0.5, 1.0], [0.0, 1.0])
        (0.25, 0.25)
    """
    x = torch.as_tensor(fractions, dtype=torch.float64)
    f = torch.as_tensor(faithfulness, dtype=torch.float64)
    if x.ndim != 1 or x.shape != f.shape or len(x) < 2:
        raise ValueError(
            f"fractions {tuple(x.shape)} and faithfulness {tuple(f.shape)} must be two equal 1-d lists of 2+ points"
        )
    if not bool((x[1:] > x[:-1]).all()):
        raise ValueError(f"fractions must increase, got {x.tolist()}")
    return float(torch.trapezoid(f, x)), float(torch.trapezoid((1 - f).abs(), x))


def ranking(scores: Float[Tensor, " edge"], *, absolute: bool) -> Tensor:
    """Edge indices, most important first: by ``|score|`` or (``absolute=False``) by
    ``-score`` (the edges whose ablation lowers the metric most first)."""
    key = scores.detach().abs() if absolute else -scores.detach()
    return key.float().cpu().argsort(descending=True, stable=True)


def grid_circuits(circuit: Circuit, fractions: Sequence[float], *, absolute: bool) -> list[Circuit]:
    """One pruned circuit per fraction: the ``int(fraction * n_edges)`` top edges (as MIB's
    ``apply_topn(n, absolute, prune=True)``)."""
    n_edges = len(circuit.graph.edges)
    order = ranking(circuit.scores, absolute=absolute)
    result = []
    for fraction in fractions:
        keep = torch.zeros(n_edges, dtype=torch.bool)
        keep[order[: int(fraction * n_edges)]] = True
        result.append(replace(circuit, in_graph=keep).pruned())
    return result


@dataclass(frozen=True, eq=False)
class MIBCurve:
    """Faithfulness per grid point and its areas. ``counts``: edges requested
    (``int(fraction * n_edges)``); ``kept``: edges left after pruning; ``values``: the raw
    mean metric of each circuit."""

    fractions: list[float]
    counts: list[int]
    kept: list[int]
    values: Float[Tensor, " point"]
    faithfulness: Float[Tensor, " point"]
    full_model: float
    empty: float
    absolute: bool
    ablation: str

    @property
    def cpr(self) -> float:
        """Area under faithfulness over the fractions (higher is better)."""
        return mib_areas(self.fractions, self.faithfulness)[0]

    @property
    def cmd(self) -> float:
        """Area under ``|1 - faithfulness|`` over the fractions (lower is better)."""
        return mib_areas(self.fractions, self.faithfulness)[1]


@torch.no_grad()
def mib_curve(
    model,
    data,
    metric: PositionalMetric,
    circuit: Circuit,
    *,
    absolute: bool = True,
    fractions: Sequence[float] = MIB_GRID,
    ablation: Ablation = "resample",
    max_memory: int | None = None,
) -> MIBCurve:
    """MIB's faithfulness curve of ``circuit.scores`` (see the module docstring): one batched
    forward over the grid, the full model and the empty circuit.

    ``data``: ``PromptPairs`` or ``PairedData``. ``absolute``: rank by magnitude (MIB's CMD
    setting) or by sign (CPR's).

    Example:
        >>> curve = mib_curve(model, pairs, pairs.metric(), circuit, absolute=False)
        >>> curve.cpr
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 <= f <= 1 for f in fractions):
        raise ValueError(f"fractions must be a non-empty list of numbers in [0, 1], got {fractions}")
    circuits = grid_circuits(circuit, fractions, absolute=absolute)
    n_edges = len(circuit.graph.edges)
    masks = torch.stack([(~c.in_graph).float() for c in circuits])
    masks = torch.cat([masks, torch.zeros(1, n_edges), torch.ones(1, n_edges)])
    values = patch_edges(
        model,
        data.clean,
        data.corrupt,
        circuit.graph,
        masks,
        metric,
        ablation=ablation,
        attention_mask=getattr(data, "attention_mask", None),
        max_memory=max_memory,
    )
    values = values.float().mean(-1).cpu()
    full_model, empty = float(values[-2]), float(values[-1])
    faithfulness = (values[:-2].double() - empty) / (full_model - empty)
    return MIBCurve(
        fractions,
        [int(f * n_edges) for f in fractions],
        [c.n_edges for c in circuits],
        values[:-2],
        faithfulness,
        full_model,
        empty,
        absolute,
        ablation,
    )


@dataclass(frozen=True, eq=False)
class MethodScore:
    """One method on one dataset: CPR (signed ranking), CMD (magnitude ranking), both curves,
    its discovered circuit's size and its run time (seconds, of discovery alone)."""

    method: str
    cpr: float
    cmd: float
    cpr_curve: MIBCurve
    cmd_curve: MIBCurve
    n_edges: int
    seconds: float
    circuit: Circuit = field(repr=False)


@dataclass(frozen=True, eq=False)
class MethodComparison:
    """``compare_methods``'s result: one ``MethodScore`` per method, in the order run."""

    scores: list[MethodScore]
    task: str = ""

    def rows(self) -> list[dict[str, Any]]:
        """One dict per method: ``task, method, cpr, cmd, n_edges, seconds`` and the
        faithfulness at each grid fraction (``f@0.001`` ... from the CMD curve)."""
        rows = []
        for score in self.scores:
            row = {
                "task": self.task,
                "method": score.method,
                "cpr": score.cpr,
                "cmd": score.cmd,
                "n_edges": score.n_edges,
                "seconds": score.seconds,
            }
            for fraction, value in zip(
                score.cmd_curve.fractions, score.cmd_curve.faithfulness.tolist(), strict=True
            ):
                row[f"f@{fraction:g}"] = value
            rows.append(row)
        return rows

    def to_frame(self):
        """The rows as a pandas ``DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def to_markdown(self) -> str:
        """A ``| method | CPR | CMD | edges |`` table."""
        lines = [
            "| method | CPR (higher better) | CMD (lower better) | circuit edges |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {s.method} | {s.cpr:.3f} | {s.cmd:.3f} | {s.n_edges} |" for s in self.scores]
        return "\n".join(lines)


def compare_methods(
    model,
    data,
    metric: PositionalMetric,
    graph: Graph,
    *,
    methods: Sequence[str] | None = None,
    configs: Mapping[str, Any] | None = None,
    fractions: Sequence[float] = MIB_GRID,
    ablation: Ablation = "resample",
    task: str = "",
    progress: bool = True,
) -> MethodComparison:
    """Run every discovery method of ``ALGORITHMS`` (or ``methods``) on one dataset and score
    each with MIB's CPR and CMD (see the module docstring). ``configs``: a config per method
    name (default: the method's default config). A progress bar runs over the methods.

    The figure is ``mechinterp.plotting.mib_figure(result)``.

    Example:
        >>> table = compare_methods(model, pairs, pairs.metric(), Graph.from_model(model), task="ioi")
        >>> print(table.to_markdown())
    """
    names = list(ALGORITHMS) if methods is None else list(methods)
    unknown = [name for name in names if name not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; ALGORITHMS has {sorted(ALGORITHMS)}")
    configs = dict(configs or {})
    scores = []
    for name in tqdm(names, desc=f"methods{f' ({task})' if task else ''}", disable=not progress):
        kwargs = {"config": configs[name]} if name in configs else {}
        start = time.perf_counter()
        circuit = ALGORITHMS[name](model, data, metric, graph, **kwargs)
        seconds = time.perf_counter() - start
        magnitude = circuit.metadata.get("scores") == "magnitude"
        run = dict(fractions=fractions, ablation=ablation)
        cmd_curve = mib_curve(model, data, metric, circuit, absolute=True, **run)
        cpr_curve = cmd_curve if magnitude else mib_curve(model, data, metric, circuit, absolute=False, **run)
        scores.append(
            MethodScore(
                name, cpr_curve.cpr, cmd_curve.cmd, cpr_curve, cmd_curve, circuit.n_edges, seconds, circuit
            )
        )
    return MethodComparison(scores, task)
