"""The batched activation-patching engine.

Activation patching (Vig et al. 2020; Meng et al. 2022; Heimersheim & Nanda 2024) runs the
model on a *base* input while replacing one activation (a cell) with its value from a
*source* run, and measures a metric. A sweep does this for thousands of cells. Instead of
one full forward per cell, the engine

1. runs the base and source inputs once each, caching the residual stream entering every
   layer, every layer's keys and values, and the patched activations;
2. stacks cells x examples as rows of a few large batched forwards;
3. starts each row at its patch layer (``start_at_layer``): no earlier layer is recomputed;
4. starts each row at its patch position: a causal model cannot change earlier positions,
   so their keys and values come from the base run (``KeyValuePrefix``);
5. unembeds only the position a positional metric reads; a row whose patch starts after
   that position, or whose patched value equals the base value bit for bit (the prompts
   agree there), cannot change the metric and is not run at all.

Rows are grouped by (hook, layer, first position) and chunked to a memory budget; a chunk
that runs out of memory is halved and retried.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechinterp.models.prefix import KeyValuePrefix
from mechinterp.patching.memory import bytes_per_row, free_memory, is_out_of_memory
from mechinterp.patching.scoring import FullLogitScorer, PositionalScorer
from mechinterp.patching.sites import PatchSite

Ablation = Literal["resample", "zero", "mean"]


def site_index(site: PatchSite, offset: int = 0) -> tuple:
    """Index (after the batch axis) of a site's slice in an activation whose position axis
    starts at ``offset`` (pattern source positions are always absolute)."""
    position = slice(None) if site.position is None else site.position - offset
    head = slice(None) if site.head is None else site.head
    if site.kind == "pattern":
        source = slice(None) if site.src_position is None else site.src_position
        return (head, position, source)
    if site.head is not None or site.kind in ("z", "q", "k", "v"):
        return (position, head)
    return (position,)


def ablated_source(source: Tensor, ablation: Ablation) -> Tensor:
    """The values patched in: the source run's (resample), zeros, or the source run's mean
    over examples."""
    if ablation == "resample":
        return source
    if ablation == "zero":
        return torch.zeros_like(source)
    if ablation == "mean":
        return source.mean(0, keepdim=True).expand_as(source)
    raise ValueError(f"ablation must be 'resample', 'zero' or 'mean', got {ablation!r}")


@dataclass(frozen=True)
class _Row:
    cell: int
    example: int


class BatchedPatcher:
    """Runs a list of cells as batched partial forwards and returns one value per cell.

    ``source_activations`` maps each patched hook name to ``[batch, ...]`` values to patch in
    (already ablated). Use ``patch_sweep`` rather than this class directly.
    """

    def __init__(
        self,
        model,
        base_tokens: Tensor,
        attention_mask: Tensor,
        cells: Sequence[PatchSite],
        source_activations: Mapping[str, Tensor],
        scorer: PositionalScorer | FullLogitScorer,
        *,
        skip_unchanged: bool,
    ):
        self.model = model
        self.tokens = base_tokens
        self.mask = attention_mask
        self.cells = list(cells)
        self.source = source_activations
        self.scorer = scorer
        hooks = {site.hook_name for site in self.cells}
        layers = {site.layer for site in self.cells}
        kv_filter = KeyValuePrefix.hook_filter(model)
        wanted = hooks | {f"blocks.{layer}.hook_resid_pre" for layer in layers}
        with torch.no_grad():
            self.base_logits, cache = model.run_with_cache(
                base_tokens, attention_mask=attention_mask, names_filter=lambda n: n in wanted or kv_filter(n)
            )
        self.base_cache = cache
        self.kv = KeyValuePrefix.from_cache(cache, model, length=base_tokens.shape[1])
        self.skip_unchanged = skip_unchanged

    # ------------------------------------------------------------------ planning
    def _rows_by_group(self) -> dict[tuple[str, int, int], list[_Row]]:
        groups: dict[tuple[str, int, int], list[_Row]] = defaultdict(list)
        for cell, site in enumerate(self.cells):
            start = site.first_position
            index = site_index(site)
            base = self.base_cache[site.hook_name]
            source = self.source[site.hook_name]
            for example in range(self.tokens.shape[0]):
                if not self.scorer.can_change(example, start):
                    continue
                if self.skip_unchanged and torch.equal(base[example][index], source[example][index]):
                    continue
                groups[(site.hook_name, site.layer, start)].append(_Row(cell, example))
        return groups

    def _auto_rows(self, max_batch_rows: int | Literal["auto"], max_memory: int | None) -> int:
        if max_batch_rows != "auto":
            if max_batch_rows < 1:
                raise ValueError(f"max_batch_rows must be >= 1 or 'auto', got {max_batch_rows}")
            return max_batch_rows
        budget = max_memory if max_memory is not None else free_memory(self.model.device) // 2
        n_pos = self.tokens.shape[1]
        n_logits = 1 if isinstance(self.scorer, PositionalScorer) else n_pos
        return max(1, budget // bytes_per_row(self.model, n_pos, n_logits, n_pos))

    # ------------------------------------------------------------------ running
    def _forward_rows(self, hook_name: str, layer: int, start: int, rows: list[_Row]) -> Tensor:
        examples = torch.tensor([r.example for r in rows], device=self.tokens.device)
        segments = []  # (first row, end row, site): consecutive rows of one cell
        for i, row in enumerate(rows):
            if segments and segments[-1][2] is self.cells[row.cell] and segments[-1][1] == i:
                segments[-1] = (segments[-1][0], i + 1, segments[-1][2])
            else:
                segments.append((i, i + 1, self.cells[row.cell]))
        source = self.source[hook_name]

        def patch(activation: Tensor, hook) -> Tensor:
            for first, end, site in segments:
                rel, absolute = (slice(None), *site_index(site, start)), (slice(None), *site_index(site))
                activation[first:end][rel] = source[examples[first:end]][absolute].to(activation.dtype)
            return activation

        if layer == 0:
            model_input = self.tokens[examples, start:]
        else:
            model_input = self.base_cache[f"blocks.{layer}.hook_resid_pre"][examples, start:]
        past = self.kv.truncate(start).select(examples) if start > 0 else None
        with self.model.hooks(fwd_hooks=[(hook_name, patch)]):
            return self.model(
                model_input,
                start_at_layer=layer,
                attention_mask=self.mask[examples],
                past=past,
                logit_positions=self.scorer.logit_positions(examples, start),
            )

    @torch.no_grad()
    def run(
        self,
        max_batch_rows: int | Literal["auto"] = "auto",
        *,
        max_memory: int | None = None,
        progress: bool = True,
        description: str = "patching",
    ) -> tuple[Tensor, Tensor]:
        """``(values per cell, base value)``; values are ``[cell, batch]`` for positional
        metrics, else ``[cell, *metric output]``."""
        groups = self._rows_by_group()
        chunk = self._auto_rows(max_batch_rows, max_memory)
        self.chunks_run = 0
        base_value = self._base_value()
        values = self._initial_values(base_value)
        pending = _PendingCells(self, groups) if isinstance(self.scorer, FullLogitScorer) else None
        total = sum(len(rows) for rows in groups.values())
        with tqdm(total=total, desc=description, unit="row", disable=not progress) as bar:
            for (hook_name, layer, start), rows in groups.items():
                done = 0
                while done < len(rows):
                    batch = rows[done : done + chunk]
                    try:
                        logits = self._forward_rows(hook_name, layer, start, batch)
                    except Exception as error:  # halve the chunk on out-of-memory, re-raise anything else
                        if not is_out_of_memory(error) or chunk == 1:
                            raise
                        chunk = max(1, chunk // 2)
                        if self.model.device.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    self.chunks_run += 1
                    if pending is None:
                        examples = torch.tensor([r.example for r in batch])
                        cells = torch.tensor([r.cell for r in batch])
                        values[cells, examples] = self.scorer.row_values(logits, examples)
                    else:
                        pending.add(batch, logits, start, values)
                    done += len(batch)
                    bar.update(len(batch))
        if pending is not None:
            pending.finish(values)
        self.rows_run, self.rows_per_chunk = total, chunk
        return values, base_value

    def _base_value(self) -> Tensor:
        if isinstance(self.scorer, PositionalScorer):
            return self.scorer.base_values(self.base_logits)
        return self.scorer.evaluate(self.base_logits)

    def _initial_values(self, base_value: Tensor) -> Tensor:
        """Every cell starts at the base value: cells (or examples) that run no row keep it."""
        return base_value.expand(len(self.cells), *base_value.shape).clone()


class _PendingCells:
    """Assembles full logits per cell from its rows, then scores the cell."""

    def __init__(self, patcher: BatchedPatcher, groups: dict[tuple[str, int, int], list[_Row]]):
        self.patcher = patcher
        self.logits: dict[int, Tensor] = {}
        self.remaining: dict[int, int] = defaultdict(int)
        for rows in groups.values():
            for row in rows:
                self.remaining[row.cell] += 1

    def add(self, rows: list[_Row], logits: Tensor, start: int, values: Tensor) -> None:
        for i, row in enumerate(rows):
            if row.cell not in self.logits:
                self.logits[row.cell] = self.patcher.base_logits.clone()
            self.logits[row.cell][row.example, start:] = logits[i]
            self.remaining[row.cell] -= 1
            if self.remaining[row.cell] == 0:
                values[row.cell] = self.patcher.scorer.evaluate(self.logits.pop(row.cell))

    def finish(self, values: Tensor) -> None:
        if self.logits:
            raise RuntimeError(f"cells {sorted(self.logits)} never received all their rows")
