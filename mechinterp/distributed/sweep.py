"""``patch_sweep`` sharded by prompt pairs over an executor.

Each example of a sweep is independent of the others (its rows read its own base and
source runs), so a sweep over many prompt pairs splits into shards of pairs: every shard
runs the ordinary batched sweep on its pairs, and the per-example results are joined along
the ``batch`` axis in pair order. Prompts are tokenised once, here, and shards keep the
full padded length, so every shard sees exactly the positions of the unsharded run.

Two settings couple examples and cannot be split: a metric that is not positional (a
callable on the logits may mix examples) and ``ablation="mean"`` (a mean over all
examples); both raise.

Example:
    >>> with RayExecutor(ModelSpec(source="smollm2-135m"), num_workers=2) as executor:
    ...     result = patch_sweep(model, clean, corrupt, SweepSpec(kind="resid_pre"), metric, executor=executor)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from mechinterp.distributed.executors import Executor
from mechinterp.metrics import PositionalMetric
from mechinterp.patching.result import PatchResult
from mechinterp.patching.sites import SweepSpec


def select_examples(
    metric: PositionalMetric, examples: Int[Tensor, " _batch"], batch: int
) -> PositionalMetric:
    """The metric restricted to ``examples`` (indices into its ``batch`` examples): every
    per-example tensor field is indexed, nested metrics too; one-number fields are kept.

    Example:
        >>> select_examples(LogitDifference.last_position(mask, correct=c, incorrect=i), torch.tensor([2, 3]), 4)
    """
    if not dataclasses.is_dataclass(metric):
        raise TypeError(
            f"cannot split {type(metric).__name__} by examples (not a dataclass metric); "
            "use a metric from mechinterp.metrics or run without an executor"
        )
    changes = {}
    for field in dataclasses.fields(metric):
        value = getattr(metric, field.name)
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch:
            changes[field.name] = value[examples.to(value.device)]
        elif isinstance(value, PositionalMetric):
            changes[field.name] = select_examples(value, examples, batch)
    return dataclasses.replace(metric, **changes)


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
        from mechinterp.patching.sweep import patch_sweep

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


def sharded_patch_sweep(
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
    """``patch_sweep`` with its prompt pairs split into shards run by ``executor``; called
    by ``patch_sweep(..., executor=...)``."""
    from mechinterp.patching.sweep import axis_labels, prepare_pair, sweep_metadata

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
