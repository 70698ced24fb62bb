"""The batched activation-patching engine.

Activation patching (Vig et al. 2020; Meng et al. 2022; Heimersheim & Nanda 2024) runs the
model on a *base* input while replacing one activation (a cell) with its value from a
*source* run, and measures a metric. A sweep does this for thousands of cells. Instead of
one full forward per cell, the engine

1. runs the base and source inputs once each, caching the residual stream entering every
   layer, every layer's keys and values, and the patched activations;
2. stacks cells x examples as rows of a few large batched forwards;
3. starts each row at its patch layer (``start_at_layer``): no earlier layer is recomputed;
4. starts each row at the first position its patch changes: a causal model cannot change
   earlier positions, so their keys and values come from the base run (``KeyValuePrefix``);
5. unembeds only the position a positional metric reads; a row whose patch starts after
   that position, or whose patched value equals the base value bit for bit (the prompts
   agree there), cannot change the metric and is not run at all.

Rows are grouped by (hook, layer), sorted by the first position they can change, and
chunked to a memory budget (a chunk starts at its earliest row's position; the later rows
recompute a few unchanged positions); a chunk that runs out of memory is halved and
retried.
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


def site_index(site: PatchSite, offset: int = 0, *, source: bool = False) -> tuple:
    """Index (after the batch axis) of a site's slice.

    With ``source=False`` it indexes an activation of a run that starts at position
    ``offset`` (its position axis is ``[offset:]``); with ``source=True`` it indexes a
    full-length activation at the same positions. Pattern source (key) positions are
    always absolute.
    """
    if site.position is None:
        position = slice(offset, None) if source else slice(None)
    else:
        position = site.position if source else site.position - offset
    head = slice(None) if site.head is None else site.head
    if site.kind == "pattern":
        key = slice(None) if site.src_position is None else site.src_position
        return (head, position, key)
    if site.head is not None or site.kind in ("z", "q", "k", "v"):
        return (position, head)
    if site.neuron is not None or site.feature is not None:
        return (position, site.neuron if site.neuron is not None else site.feature)
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


def first_changed_positions(site: PatchSite, base: Tensor, source: Tensor) -> Tensor:
    """Per example, the first position where patching ``site`` changes the base activation
    (``-1`` where it changes nothing). Causality: no earlier position can be affected."""
    index = site_index(site)
    differs = (base != source)[(slice(None), *index)]
    if site.position is not None:
        changed = differs.reshape(differs.shape[0], -1).any(1)
        return torch.where(changed, site.position, -1).cpu()
    position_entry = 1 if site.kind == "pattern" else 0
    axis = 1 + sum(isinstance(entry, slice) for entry in index[:position_entry])
    per_position = differs.movedim(axis, 1).reshape(differs.shape[0], differs.shape[axis], -1).any(-1)
    first = per_position.int().argmax(1)
    return torch.where(per_position.any(1), first, -1).cpu()


@dataclass(frozen=True)
class _Row:
    cell: int
    example: int
    layer: int
    start: int


class BaseRun:
    """The unpatched run that patched rows branch off: its logits, the residual stream
    entering the requested layers, every layer's keys and values, and the activations at
    ``hook_names``. ``forward_rows`` runs rows that enter at given layers from it."""

    def __init__(self, model, tokens: Tensor, attention_mask: Tensor, hook_names: set[str], layers: set[int]):
        self.model, self.tokens, self.mask = model, tokens, attention_mask
        n_layers = model.architecture.n_layers
        kv_filter = KeyValuePrefix.hook_filter(model)
        wanted = set(hook_names) | {self._entering_hook(layer) for layer in layers if layer > 0}
        with torch.no_grad():
            self.logits, self.cache = model.run_with_cache(
                tokens, attention_mask=attention_mask, names_filter=lambda n: n in wanted or kv_filter(n)
            )
        self.kv = KeyValuePrefix.from_cache(self.cache, model, length=tokens.shape[1])
        self.n_layers = n_layers

    def _entering_hook(self, layer: int) -> str:
        n_layers = self.model.architecture.n_layers
        return (
            f"blocks.{layer}.hook_resid_pre" if layer < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"
        )

    def forward_rows(self, layers: Sequence[int], examples: Tensor, start: int, hooks: list) -> Tensor:
        """The final residual stream ``[row, pos - start, d_model]`` of rows that enter at
        ``layers`` (sorted; ``n_layers`` = after the last block) with the base run's residual
        stream, computing positions ``start:`` only, with ``hooks`` active."""
        model = self.model
        positions, allowed, rotary = model.attention_inputs(self.mask[examples], start)
        past = self.kv.truncate(start).select(examples) if start > 0 else None
        joining = defaultdict(list)
        for i, layer in enumerate(layers):
            joining[layer].append(i)
        residual = None
        with model.hooks(fwd_hooks=hooks):
            for layer in range(layers[0], self.n_layers + 1):
                if joining[layer]:
                    new = examples[joining[layer][0] : joining[layer][-1] + 1]
                    if layer == 0:
                        entering = model.embed_tokens(self.tokens[new, start:], positions[: len(new)])
                    else:
                        entering = self.cache[self._entering_hook(layer)][new, start:]
                    residual = entering if residual is None else torch.cat([residual, entering])
                if layer == self.n_layers:
                    break
                n = residual.shape[0]
                layer_rotary = None if rotary is None else (rotary[0][:n], rotary[1][:n])
                layer_past = None if past is None else tuple(t[:n] for t in past.layer(layer))
                residual = model.blocks[layer](residual, allowed[:n], layer_rotary, layer_past)
        return residual


class BatchedPatcher:
    """Runs a list of cells as batched partial forwards and returns one value per cell.

    ``source_activations`` maps each patched hook name to ``[batch, ...]`` values to patch in
    (already ablated). Use ``patch_sweep`` rather than this class directly.

    A chunk of rows runs as one pass over the layers: rows join the batch at their patch
    layer (entering with the base run's residual stream), so each layer's weights are read
    once per chunk however many layers the rows start at.
    """

    def __init__(
        self,
        model,
        base_tokens: Tensor,
        attention_mask: Tensor,
        cells: Sequence[PatchSite],
        source_activations: Mapping[str, Tensor],
        scorer: PositionalScorer | FullLogitScorer,
    ):
        self.model = model
        self.tokens = base_tokens
        self.mask = attention_mask
        self.cells = list(cells)
        self.source = source_activations
        self.scorer = scorer
        self.base = BaseRun(
            model,
            base_tokens,
            attention_mask,
            {site.hook_name for site in self.cells},
            {site.layer for site in self.cells},
        )
        self.base_logits, self.base_cache = self.base.logits, self.base.cache

    # ------------------------------------------------------------------ planning
    def _plan(self) -> list[_Row]:
        """Rows that can change the metric, sorted by start position, then layer.

        A row starts at the first position where its patched values differ from the base
        run's; a row that differs nowhere, or only after the position the metric reads,
        cannot change the result and is left out (its cell keeps the base value).
        """
        rows = []
        for cell, site in enumerate(self.cells):
            starts = first_changed_positions(
                site, self.base_cache[site.hook_name], self.source[site.hook_name]
            )
            for example, start in enumerate(starts.tolist()):
                if start >= 0 and self.scorer.can_change(example, start):
                    rows.append(_Row(cell, example, site.layer, start))
        return sorted(rows, key=lambda row: (row.start, row.layer))

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
    def _patch_hooks(self, rows: list[_Row], examples: Tensor, start: int) -> list[tuple[str, object]]:
        """One hook per patched hook point; each patches the rows of its cells in place."""
        segments: dict[str, list[tuple[int, int, PatchSite]]] = defaultdict(list)
        for i, row in enumerate(rows):  # consecutive rows of one cell form a segment
            site = self.cells[row.cell]
            runs = segments[site.hook_name]
            if runs and runs[-1][2] is site and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1, site)
            else:
                runs.append((i, i + 1, site))

        def make_hook(hook_name: str):
            source = self.source[hook_name]

            def patch(activation: Tensor, hook) -> Tensor:
                for first, end, site in segments[hook_name]:
                    target = (slice(None), *site_index(site, start))
                    values = source[examples[first:end]][(slice(None), *site_index(site, start, source=True))]
                    activation[first:end][target] = values.to(activation.dtype)
                return activation

            return patch

        return [(name, make_hook(name)) for name in segments]

    def _forward_rows(self, rows: list[_Row]) -> tuple[Tensor, int]:
        """The final residual stream ``[row, pos - start, d_model]`` of rows that share a start
        position and are sorted by layer, and that start position."""
        start = rows[0].start
        examples = torch.tensor([r.example for r in rows], device=self.tokens.device)
        hooks = self._patch_hooks(rows, examples, start)
        return self.base.forward_rows([r.layer for r in rows], examples, start, hooks), start

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
        rows = self._plan()
        chunk = self._auto_rows(max_batch_rows, max_memory)
        self.chunks_run = 0
        base_value = self.scorer.run_values(self.base_logits)
        values = base_value.expand(len(self.cells), *base_value.shape).clone()  # unrun cells keep it
        positional = isinstance(self.scorer, PositionalScorer)
        pending = None if positional else _PendingCells(self, rows)
        read_residuals = []
        with tqdm(total=len(rows), desc=description, unit="row", disable=not progress) as bar:
            done = 0
            while done < len(rows):
                batch = _same_start(rows[done : done + chunk])
                try:
                    residual, start = self._forward_rows(batch)
                except Exception as error:  # halve the chunk on out-of-memory, re-raise anything else
                    if not is_out_of_memory(error) or chunk == 1:
                        raise
                    chunk = max(1, chunk // 2)
                    if self.model.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                self.chunks_run += 1
                examples = torch.tensor([r.example for r in batch])
                if positional:  # keep the read position only; unembed all rows at the end
                    read = self.scorer.logit_positions(examples, start)[:, 0].to(residual.device)
                    read_residuals.append(residual[torch.arange(len(batch)), read])
                else:
                    pending.add(batch, self.model.unembed(self.model.ln_final(residual)), start, values)
                done += len(batch)
                bar.update(len(batch))
        if positional and rows:
            self._score_read_positions(rows, torch.cat(read_residuals), values)
        if pending is not None:
            pending.finish()
        self.rows_run, self.rows_per_chunk = len(rows), chunk
        return values, base_value

    def _score_read_positions(
        self, rows: list[_Row], residual: Tensor, values: Tensor, block: int = 1024
    ) -> None:
        """Unembed the read positions of all rows (in blocks of rows) and score them."""
        examples = torch.tensor([r.example for r in rows])
        cells = torch.tensor([r.cell for r in rows])
        for first in range(0, len(rows), block):
            part = slice(first, first + block)
            logits = self.model.unembed(self.model.ln_final(residual[part][:, None]))
            values[cells[part], examples[part]] = self.scorer.row_values(logits, examples[part])


def _same_start(rows: list[_Row]) -> list[_Row]:
    """The leading rows that share the first row's start position: a chunk never makes a
    row compute positions before its own start."""
    end = next((i for i, row in enumerate(rows) if row.start != rows[0].start), len(rows))
    return rows[:end]


class _PendingCells:
    """Assembles full logits per cell from its rows, then scores the cell."""

    def __init__(self, patcher: BatchedPatcher, rows: list[_Row]):
        self.patcher = patcher
        self.logits: dict[int, Tensor] = {}
        self.remaining: dict[int, int] = defaultdict(int)
        for row in rows:
            self.remaining[row.cell] += 1

    def add(self, rows: list[_Row], logits: Tensor, start: int, values: Tensor) -> None:
        for i, row in enumerate(rows):
            if row.cell not in self.logits:
                self.logits[row.cell] = self.patcher.base_logits.clone()
            self.logits[row.cell][row.example, start:] = logits[i]
            self.remaining[row.cell] -= 1
            if self.remaining[row.cell] == 0:
                values[row.cell] = self.patcher.scorer.run_values(self.logits.pop(row.cell))

    def finish(self) -> None:
        if self.logits:
            raise RuntimeError(f"cells {sorted(self.logits)} never received all their rows")
