"""``patch_sweep``: the public entry point of the batched patching engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from mechinterp.dims import AttentionMask, Tokens
from mechinterp.metrics import MetricFn, PositionalMetric
from mechinterp.patching.engine import Ablation, BatchedPatcher
from mechinterp.patching.result import PatchResult
from mechinterp.patching.scoring import FullLogitScorer, PositionalScorer
from mechinterp.patching.sites import SweepGrid, SweepSpec

Direction = Literal["denoise", "noise"]
TextOrTokens = str | list[str] | Tokens


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
    executor=None,
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
        executor: split the prompt pairs into shards run by a
            ``mechinterp.distributed`` executor (``RayExecutor`` for a cluster); the
            results equal the unsharded run's. Needs a positional metric.

    Returns:
        ``PatchResult`` with values ``[*spec axes, batch]`` (positional / per-example
        metrics) or ``[*spec axes]`` (scalar metrics).

    Example:
        >>> metric = LogitDifference.last_position(mask, correct=[mary], incorrect=[john])
        >>> result = patch_sweep(model, clean, corrupt, SweepSpec(kind="resid_pre"), metric)
        >>> result.normalized()   # [layer, pos], 0 = corrupted, 1 = clean
    """
    if executor is not None:
        from mechinterp.distributed.sweep import sharded_patch_sweep

        return sharded_patch_sweep(
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
