"""Work split by prompt pairs: the ``Executor`` protocol and ``select_examples``.

Each example of a sweep is independent of the others (its rows read its own base and
source runs), so an entry point such as ``patch_sweep(..., executor=...)`` can split its
prompt pairs into shards, hand an executor a task ``task(model, shard) -> result`` and the
shards, and combine the results in shard order: the answer does not depend on where the
shards ran. This module says what an executor must do; the executors themselves
(``LocalExecutor``, ``RayExecutor``, ``Checkpointed``) live in ``mechinterp.distributed``,
which sits above the patching layer and is never imported by it.

Example:
    >>> from mechinterp.distributed import LocalExecutor
    >>> isinstance(LocalExecutor(pairs_per_shard=8), Executor)
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from jaxtyping import Int
from torch import Tensor

from mechinterp.metrics import PositionalMetric

Shard = TypeVar("Shard")
Result = TypeVar("Result")
Task = Callable[[Any, Shard], Result]


@runtime_checkable
class Executor(Protocol):
    """Runs ``task(model, shard)`` for every shard; results in shard order."""

    def shard_size(self, n_items: int) -> int:
        """How many items (prompt pairs) go in one shard."""
        ...

    def map(
        self,
        model,
        task: Task,
        shards: Sequence[Shard],
        *,
        sizes: Sequence[int],
        progress: bool,
        description: str,
        on_result: Callable[[int, Result], None] | None = None,
    ) -> list[Result]:
        """``[task(model, shard) for shard in shards]``; ``sizes`` (items per shard) drive
        the progress bar; ``on_result(index, result)`` is called as each shard finishes."""
        ...


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
