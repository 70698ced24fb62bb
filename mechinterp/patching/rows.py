"""The row runner: one executor for batched patched rows.

Every exact patching algorithm (``patch_sweep``, ``path_patch``, edge patching in
``circuits``) turns its question into *rows*: patched forward passes, each entering the
model at some layer (nothing before it can change) and changing nothing before some
position (causality). ``run_rows`` executes them:

1. rows are grouped by start position, then by entry layer;
2. consecutive rows form chunks that fit a memory budget (``max_memory`` bytes, default
   half the free device memory, or a fixed ``max_rows``); a chunk starts at its earliest
   row's position, so later rows recompute a few unchanged positions instead of costing a
   pass of their own (few passes matter more than a few positions: a GPU is bound by the
   number of launched operations);
3. within a chunk rows are ordered by entry layer, as ``HookedLM.run_blocks`` wants them;
4. a chunk that runs out of memory is halved and retried;
5. a progress bar counts rows.

The caller's ``run_chunk(rows, start)`` does the work for a chunk (``rows``: indices into
the caller's rows, ordered by entry layer).

Example:
    >>> stats = run_rows(RowSet(layer=layers, start=starts), run_chunk, row_bytes=lambda n_pos: 4096 * n_pos,
    ...                  device=model.device, progress=False)
    >>> stats.chunks
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechinterp.patching.memory import is_out_of_memory, memory_budget


@dataclass(frozen=True)
class RowSet:
    """Rows to run: the layer each enters at and the first position it can change
    (``[row]`` integer tensors on the CPU)."""

    layer: Tensor
    start: Tensor

    def __len__(self) -> int:
        return self.layer.shape[0]


@dataclass(frozen=True)
class RowStats:
    """What a run did: rows run, chunks (batched passes) and the largest chunk run."""

    rows: int
    chunks: int
    rows_per_chunk: int


def rows_per_chunk(
    row_bytes: int,
    device: torch.device,
    max_rows: int | Literal["auto"] = "auto",
    max_memory: int | None = None,
) -> int:
    """The rows ``run_rows`` puts in a chunk whose rows cost ``row_bytes`` each (before any halving)."""
    fitting = max(1, memory_budget(device, max_memory) // max(row_bytes, 1))
    return fitting if max_rows == "auto" else min(max_rows, fitting)


def run_rows(
    rows: RowSet,
    run_chunk: Callable[[Tensor, int], None],
    *,
    row_bytes: Callable[[int], int],
    n_positions: int,
    device: torch.device,
    max_rows: int | Literal["auto"] = "auto",
    max_memory: int | None = None,
    progress: bool = True,
    description: str = "patching",
) -> RowStats:
    """Run ``rows`` in chunks (see the module docstring).

    Args:
        run_chunk: ``run_chunk(indices, start)`` runs the rows ``indices`` (ordered by entry
            layer) computing positions ``start:``.
        row_bytes: peak memory of one row that computes ``n`` positions, ``row_bytes(n)``.
        n_positions: the prompt length.
        max_rows: rows per chunk, or ``"auto"`` to fit ``max_memory`` (default: half the
            free memory of ``device``).
    """
    if max_rows != "auto" and max_rows < 1:
        raise ValueError(f"max_batch_rows must be >= 1 or 'auto', got {max_rows}")
    n = len(rows)
    order = (
        torch.argsort(rows.start * (int(rows.layer.max()) + 1) + rows.layer, stable=True) if n else rows.start
    )
    starts = rows.start[order].tolist()
    budget = memory_budget(device, max_memory)
    limit = n if max_rows == "auto" else max_rows  # halved on out-of-memory
    chunks, largest = 0, 0
    with tqdm(total=n, desc=description, unit="row", disable=not progress) as bar:
        done = 0
        while done < n:
            start = starts[done]
            size = min(limit, max(1, budget // max(row_bytes(n_positions - start), 1)))
            chunk = order[done : done + size]
            chunk = chunk[torch.argsort(rows.layer[chunk], stable=True)]
            try:
                run_chunk(chunk, start)
            except Exception as error:  # halve the chunk on out-of-memory, re-raise anything else
                if not is_out_of_memory(error) or size == 1:
                    raise
                limit = max(1, size // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            chunks += 1
            largest = max(largest, len(chunk))
            done += len(chunk)
            bar.update(len(chunk))
    return RowStats(rows=n, chunks=chunks, rows_per_chunk=largest)
