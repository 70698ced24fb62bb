"""``patch_sweep``: the public entry point of the batched patching engine.

With ``executor=`` the sweep is split by prompt pairs: every shard runs the ordinary batched
sweep on its pairs (on whatever the executor runs it: this process, Ray actors), and the
per-example results are joined along the ``batch`` axis in pair order. Prompts are tokenised
once, here, and shards keep the full padded length, so every shard sees exactly the
positions of the unsharded run. Two settings couple examples and cannot be split: a metric
that is not positional (a callable on the logits may mix examples) and ``ablation="mean"``
(a mean over all examples); both raise.

Example:
    >>> with RayExecutor(ModelSpec(source="smollm2-135m"), num_workers=2) as executor:
    ...     result = patch_sweep(model, clean, corrupt, SweepSpec(kind="resid_pre"), metric, executor=executor)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from mechinterp.dims import AttentionMask
from mechinterp.metrics import MetricFn, PositionalMetric
from mechinterp.patching.engine import Ablation, BatchedPatcher
from mechinterp.patching.result import PatchResult
from mechinterp.patching.scoring import FullLogitScorer, PositionalScorer
from mechinterp.patching.shards import Executor, select_examples
from mechinterp.patching.sites import SweepGrid, SweepSpec

Direction = Literal["denoise", "noise"]
# clean and corrupt tokens may disagree in shape: prepare_pair says so in its own words
TextOrTokens = str | list[str] | Int[Tensor, "_batch _pos"]


def prepare_pair(model, clean: TextOrTokens, corrupt: TextOrTokens, attention_mask: Tensor | None):
    """Clean and corrupt token tensors of equal shape, and their shared attention mask."""
    if isinstance(clean, (str, list)) != isinstance(corrupt, (str, list)):
        raise ValueError("pass clean and corrupt both as text or both as token tensors")
    if isinstance(clean, (str, list)):
        if attention_mask is not None:
            raise ValueError("attention_mask is computed from text inputs; pass it only with token tensors")
        clean, clean_mask = model.encode(clean)
        corrupt, attention_mask = model.encode(corrupt)
        if clean.shape != corrupt.shape or not torch.equal(clean_mask, attention_mask):
            raise ValueError(
                "clean and corrupt prompts must have the same number of tokens, example by example; "
                f"got clean lengths {clean_mask.sum(1).tolist()} and corrupt lengths {attention_mask.sum(1).tolist()}"
            )
    if clean.shape != corrupt.shape:
        raise ValueError(
            f"clean tokens have shape {tuple(clean.shape)} but corrupt tokens {tuple(corrupt.shape)}"
        )
    if clean.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(clean.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(clean)
    elif attention_mask.shape != clean.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from tokens {tuple(clean.shape)}"
        )
    device = model.device
    return clean.to(device), corrupt.to(device), attention_mask.to(device)


def base_and_source(clean: Tensor, corrupt: Tensor, direction: Direction) -> tuple[Tensor, Tensor]:
    """``(base, source)`` runs: denoising runs the corrupt prompt and patches in clean values,
    noising the reverse."""
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    return (corrupt, clean) if direction == "denoise" else (clean, corrupt)


def make_scorer(metric: PositionalMetric | Callable, model, tokens: Tensor, mask: Tensor):
    """A ``PositionalScorer`` for positional metrics; else a full-logit scorer whose reduce
    mode (scalar or per example) is read off the metric's value on the given run."""
    batch, n_pos = tokens.shape
    if isinstance(metric, PositionalMetric):
        return PositionalScorer(metric, batch, n_pos)
    if not callable(metric):
        raise TypeError(
            f"metric must be a PositionalMetric or a callable on logits, got {type(metric).__name__}"
        )
    with torch.no_grad():
        probe = torch.as_tensor(metric(model(tokens, attention_mask=mask)))
    if probe.ndim == 0:
        return FullLogitScorer(metric, batch, "scalar")
    if probe.shape == (batch,):
        return FullLogitScorer(metric, batch, "none")
    raise ValueError(
        f"metric must return a scalar or one value per example ({batch}), got shape {tuple(probe.shape)}"
    )


def axis_labels(model, grid: SweepGrid, tokens: Tensor) -> dict[str, list[str]]:
    """Readable labels: ``L3``, ``H7``, and ``5: John`` for positions (first example's tokens)."""
    try:
        words = model.to_str_tokens(tokens[0])
    except ValueError:  # no tokenizer
        words = [""] * tokens.shape[1]
    prefix = {"layer": "L", "head": "H", "neuron": "N", "feature": "F"}
    labels = {}
    for axis in grid.axes:
        if axis in prefix:
            labels[axis] = [f"{prefix[axis]}{i}" for i in grid.coordinates[axis]]
        else:
            labels[axis] = [f"{i}: {words[i]}" for i in grid.coordinates[axis]]
    return labels


def patch_sweep(
    model,
    clean: TextOrTokens,
    corrupt: TextOrTokens,
    spec: SweepSpec,
    metric: PositionalMetric | MetricFn,
    *,
    direction: Direction = "denoise",
    ablation: Ablation = "resample",
    attention_mask: AttentionMask | None = None,
    max_batch_rows: int | Literal["auto"] = "auto",
    max_memory: int | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> PatchResult:
    """Patch every cell of ``spec`` and measure ``metric``, in a few batched forwards.

    Args:
        clean, corrupt: prompts (text or ``[batch, pos]`` tokens of equal shape); example
            ``i`` of one is paired with example ``i`` of the other.
        spec: which activations to patch (``SweepSpec``).
        metric: a positional metric (``mechinterp.metrics``; fastest: only the position it
            reads is unembedded) or any callable on logits ``[batch, pos, d_vocab]``
            returning a scalar or one value per example.
        direction: ``"denoise"`` runs the corrupt input and patches in clean values;
            ``"noise"`` runs the clean input and patches in corrupt values.
        ablation: what is patched in: the other run's activation (``"resample"``), zeros
            (``"zero"``), or the other run's activation averaged over examples (``"mean"``).
        attention_mask: for padded token batches (shared by clean and corrupt).
        max_batch_rows: rows (cells x examples) per forward; ``"auto"`` fits a memory
            budget (``max_memory`` bytes, default half the free device memory).
        progress: show a progress bar.
        executor: split the prompt pairs into shards run by an ``Executor``
            (``mechinterp.distributed``: ``LocalExecutor``, ``RayExecutor`` for a cluster,
            ``Checkpointed``); the results equal the unsharded run's. Needs a positional
            metric.

    Returns:
        ``PatchResult`` with values ``[*spec axes, batch]`` (positional / per-example
        metrics) or ``[*spec axes]`` (scalar metrics).

    Example:
        >>> metric = LogitDifference.last_position(mask, correct=[mary], incorrect=[john])
        >>> result = patch_sweep(model, clean, corrupt, SweepSpec(kind="resid_pre"), metric)
        >>> result.normalized()   # [layer, pos], 0 = corrupted, 1 = clean
    """
    if executor is not None:
        return _sharded_patch_sweep(
            model,
            clean,
            corrupt,
            spec,
            metric,
            executor=executor,
            direction=direction,
            ablation=ablation,
            attention_mask=attention_mask,
            max_batch_rows=max_batch_rows,
            max_memory=max_memory,
            progress=progress,
        )
    clean_tokens, corrupt_tokens, mask = prepare_pair(model, clean, corrupt, attention_mask)
    base_tokens, source_tokens = base_and_source(clean_tokens, corrupt_tokens, direction)
    grid = spec.enumerate(model, base_tokens.shape[1])
    scorer = make_scorer(metric, model, base_tokens, mask)
    patcher = BatchedPatcher(
        model, base_tokens, mask, grid.cells, scorer, source_tokens=source_tokens, ablation=ablation
    )
    values, base_value = patcher.run(
        max_batch_rows, max_memory=max_memory, progress=progress, description=f"patching {spec.kind}"
    )
    source_value = scorer.run_values(patcher.source_logits)
    return PatchResult(
        values=values.reshape(*grid.shape, *values.shape[1:]),
        axes=grid.axes,
        labels=axis_labels(model, grid, clean_tokens),
        base=base_value,
        source=source_value if ablation == "resample" else None,
        per_example=scorer.per_example,
        metadata=sweep_metadata(
            model,
            spec,
            metric,
            direction,
            ablation,
            examples=int(base_tokens.shape[0]),
            rows_run=patcher.rows_run,
            chunks=patcher.chunks_run,
            rows_per_chunk=patcher.rows_per_chunk,
        ),
    )


def sweep_metadata(model, spec: SweepSpec, metric, direction: str, ablation: str, **counts) -> dict:
    """A sweep result's ``metadata``: its settings, plus the run's counts (rows, chunks, ...)."""
    return {
        "kind": spec.kind,
        "direction": direction,
        "ablation": ablation,
        "model": model.architecture.model_name,
        "metric": type(metric).__name__,
        **counts,
    }


@dataclass(frozen=True)
class SweepShard:
    """The prompt pairs of one shard (CPU tensors) and the metric restricted to them."""

    clean: Tensor
    corrupt: Tensor
    attention_mask: Tensor
    metric: PositionalMetric


@dataclass(frozen=True, kw_only=True)
class SweepTask:
    """Runs the ordinary ``patch_sweep`` on one shard (what each worker executes)."""

    spec: SweepSpec
    direction: str
    ablation: str
    max_batch_rows: int | Literal["auto"]
    max_memory: int | None

    def __call__(self, model, shard: SweepShard) -> dict[str, Any]:
        result = patch_sweep(
            model,
            shard.clean,
            shard.corrupt,
            self.spec,
            shard.metric,
            direction=self.direction,
            ablation=self.ablation,
            attention_mask=shard.attention_mask,
            max_batch_rows=self.max_batch_rows,
            max_memory=self.max_memory,
            progress=False,
        )
        return {
            "values": result.values.cpu(),
            "base": result.base.cpu(),
            "source": None if result.source is None else result.source.cpu(),
            "rows_run": result.metadata["rows_run"],
            "chunks": result.metadata["chunks"],
        }


def _sharded_patch_sweep(
    model,
    clean,
    corrupt,
    spec: SweepSpec,
    metric,
    *,
    executor: Executor,
    direction: str,
    ablation: str,
    attention_mask: Tensor | None,
    max_batch_rows: int | Literal["auto"],
    max_memory: int | None,
    progress: bool,
) -> PatchResult:
    """``patch_sweep`` with its prompt pairs split into shards run by ``executor`` (see the
    module docstring)."""
    if not isinstance(metric, PositionalMetric):
        raise ValueError(
            "a sweep split over an executor needs a positional metric (mechinterp.metrics: "
            "LogitDifference, ProbabilityDifference, KLDivergence, Normalized); "
            f"{type(metric).__name__} may mix examples"
        )
    if ablation == "mean":
        raise ValueError(
            "ablation='mean' averages over all examples and cannot be split into shards; "
            "run it without an executor"
        )
    clean_tokens, corrupt_tokens, mask = prepare_pair(model, clean, corrupt, attention_mask)
    batch, n_pos = clean_tokens.shape
    grid = spec.enumerate(model, n_pos)  # checks the spec before any worker starts
    size = executor.shard_size(batch)
    ranges = [torch.arange(first, min(first + size, batch)) for first in range(0, batch, size)]
    shards = [
        SweepShard(
            clean_tokens[index].cpu(),
            corrupt_tokens[index].cpu(),
            mask[index].cpu(),
            select_examples(metric, index, batch),
        )
        for index in ranges
    ]
    task = SweepTask(
        spec=spec,
        direction=direction,
        ablation=ablation,
        max_batch_rows=max_batch_rows,
        max_memory=max_memory,
    )
    parts = executor.map(
        model,
        task,
        shards,
        sizes=[len(index) for index in ranges],
        progress=progress,
        description=f"patching {spec.kind}",
    )
    sources = [part["source"] for part in parts]
    return PatchResult(
        values=torch.cat([part["values"] for part in parts], dim=-1),
        axes=grid.axes,
        labels=axis_labels(model, grid, clean_tokens),
        base=torch.cat([part["base"] for part in parts]),
        source=None if sources[0] is None else torch.cat(sources),
        per_example=True,
        metadata=sweep_metadata(
            model,
            spec,
            metric,
            direction,
            ablation,
            examples=batch,
            rows_run=sum(part["rows_run"] for part in parts),
            chunks=sum(part["chunks"] for part in parts),
            shards=len(parts),
            executor=type(executor).__name__,
        ),
    )
