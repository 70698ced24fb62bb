"""The batched activation-patching engine.

Activation patching (Vig et al. 2020; Meng et al. 2022; Heimersheim & Nanda 2024) runs the
model on a *base* input while replacing one activation (a cell) with its value from a
*source* run, and measures a metric. A sweep does this for thousands of cells. Instead of
one full forward per cell, the engine

1. runs the base and source inputs once, as one batched forward (``BaseRun``), caching the
   residual stream entering every layer, every layer's keys and values, and the patched
   activations;
2. finds, for all cells at once, the first position where each cell's patched values
   differ from the base run's; a cell that differs nowhere, or only after the position a
   positional metric reads, cannot change the result and is not run (it keeps the base
   value);
3. stacks the remaining cells x examples as rows of a few large batched forwards (the row
   runner, ``mechinterp.patching.rows``): each row enters at its patch layer (no earlier
   layer is recomputed) and at its chunk's first changed position (earlier positions'
   keys and values come from the base run, ``KeyValuePrefix``);
4. patches every row of a layer with one ``where`` over a per-row selection mask, so a
   chunk costs about one forward's worth of operations however many cells it holds;
5. unembeds only the position a positional metric reads, for all rows at the end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from mechinterp.patching.base_run import BaseRun, run_lengths
from mechinterp.patching.memory import bytes_per_row
from mechinterp.patching.rows import RowSet, run_rows
from mechinterp.patching.scoring import FullLogitScorer, PositionalScorer
from mechinterp.patching.sites import SAE_KINDS, PatchSite

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


# ---------------------------------------------------------------------- vectorised cells
class CellTable:
    """Cells of one kind as integer coordinates, for vectorised planning and patching.

    Each activation of the kind (after its batch axis) has *selection axes* that a cell may
    pick one index of (``-1``: every index) and trailing feature axes it always takes whole:
    ``[pos] + d_model`` (residual-width kinds), ``[pos, head] + d_head`` (``z/q/k/v``),
    ``[pos, neuron]`` (``mlp_post``), ``[pos, feature]`` (``sae_*`` latents),
    ``[head, dest_pos, src_pos]`` (``pattern``).
    """

    def __init__(self, cells: Sequence[PatchSite]):
        kinds = {site.kind for site in cells}
        if len(kinds) > 1:
            raise ValueError(f"one patcher runs cells of one kind; got {sorted(kinds)}")
        self.kind = next(iter(kinds)) if kinds else "resid_pre"
        self.hooks = sorted({site.hook_name for site in cells}, key=lambda n: (int(n.split(".")[1]), n))
        hook_id = {name: i for i, name in enumerate(self.hooks)}
        self.hook = torch.tensor([hook_id[site.hook_name] for site in cells], dtype=torch.long, device="cpu")
        self.layer = torch.tensor([site.layer for site in cells], dtype=torch.long, device="cpu")
        if self.kind == "pattern":
            rows = [(s.head, s.position, s.src_position) for s in cells]
            self.position_axis, self.features = 1, 0
        elif self.kind in ("z", "q", "k", "v"):
            rows = [(s.position, s.head) for s in cells]
            self.position_axis, self.features = 0, 1
        elif self.kind == "mlp_post":
            rows = [(s.position, s.neuron) for s in cells]
            self.position_axis, self.features = 0, 0
        elif self.kind in SAE_KINDS:  # one latent (or all: feature None) of the spliced SAE
            rows = [(s.position, s.feature) for s in cells]
            self.position_axis, self.features = 0, 0
        else:
            rows = [(s.position,) for s in cells]
            self.position_axis, self.features = 0, 1
        n_axes = 3 if self.kind == "pattern" else (1 if rows and len(rows[0]) == 1 else 2)
        coords = [[-1 if c is None else c for c in row] for row in rows]
        self.coords = torch.tensor(coords, dtype=torch.long, device="cpu").reshape(len(cells), n_axes)

    def __len__(self) -> int:
        return self.coords.shape[0]

    def selection(self, activation: Tensor) -> Tensor:
        """``[..., *selection axes]``: the trailing feature axes reduced by ``any``
        (``activation`` boolean)."""
        return activation.flatten(-self.features).any(-1) if self.features else activation

    def first_changed(self, differs: Tensor) -> Tensor:
        """Per cell and example, the first position where the cell's slice differs (``-1``:
        nowhere). ``differs``: ``[hook, batch, *selection axes]`` booleans.

        Cells are grouped by which axes they take whole (at most eight groups); each group
        costs a handful of operations however many cells it holds."""
        first = torch.full((len(self), differs.shape[1]), -1, dtype=torch.long, device=differs.device)
        whole = self.coords < 0
        patterns, group_of = torch.unique(whole, dim=0, return_inverse=True)
        for g, pattern in enumerate(patterns.tolist()):
            members = (group_of == g).nonzero()[:, 0]
            first[members.to(first.device)] = self._group_first(differs, members, pattern)
        return first

    def _group_first(self, differs: Tensor, members: Tensor, whole: list[bool]) -> Tensor:
        """``[member, batch]`` first changed positions of cells that take the same axes whole."""
        coords = self.coords[members].to(differs.device)
        hook = self.hook[members].to(differs.device)
        table = differs  # [hook, batch, *axes]
        for axis in reversed(range(len(whole))):  # reduce the axes these cells take whole
            if whole[axis] and axis != self.position_axis:
                table = table.any(2 + axis)
        kept = [a for a in range(len(whole)) if a == self.position_axis or not whole[a]]
        index = [hook] + [slice(None) if a == self.position_axis else coords[:, a] for a in kept]
        per_cell = table.movedim(1, -1)[tuple(index)]  # [cell, pos, batch]
        if whole[self.position_axis]:
            return torch.where(per_cell.any(1), per_cell.int().argmax(1), -1)
        position = coords[:, self.position_axis]
        changed = per_cell.gather(1, position[:, None, None].expand(-1, 1, per_cell.shape[2]))[:, 0]
        return torch.where(changed, position[:, None], -1)

    def slice_sums(self, values: Tensor) -> Tensor:
        """``[cell, batch]``: each cell's slice of ``values`` (``[hook, batch, *activation
        axes]``, one entry per ``hooks``) summed, grouped like ``first_changed``."""
        if self.features:
            values = values.flatten(-self.features).sum(-1)
        sums = values.new_zeros(len(self), values.shape[1])
        whole = self.coords < 0
        patterns, group_of = torch.unique(whole, dim=0, return_inverse=True)
        for g, pattern in enumerate(patterns.tolist()):
            members = (group_of == g).nonzero()[:, 0]
            coords = self.coords[members].to(values.device)
            table = values  # [hook, batch, *axes]
            for axis in reversed(range(len(pattern))):
                if pattern[axis]:
                    table = table.sum(2 + axis)
            specific = [a for a in range(len(pattern)) if not pattern[a]]
            index = [self.hook[members].to(values.device)] + [coords[:, a] for a in specific]
            sums[members.to(values.device)] = table.movedim(1, -1)[tuple(index)]  # [cell, batch]
        return sums

    def masks(self, cells: Tensor, shape: Sequence[int], start: int, device: torch.device) -> Tensor:
        """Boolean ``[row, *shape]`` (``shape``: an activation's axes after batch, positions
        from ``start``): where each row's cell patches."""
        coords = self.coords[cells].to(device)
        n_axes = coords.shape[1]
        mask = None
        for axis in range(n_axes):
            size = shape[axis]
            offset = start if axis == self.position_axis else 0
            coord = coords[:, axis : axis + 1]
            hit = (torch.arange(offset, offset + size, device=device) == coord) | (coord < 0)
            view = [coords.shape[0]] + [1] * (len(shape))
            view[1 + axis] = size
            hit = hit.view(view)
            mask = hit if mask is None else mask & hit
        return mask


class BatchedPatcher:
    """Runs a list of cells (of one kind) as batched partial forwards and returns one value
    per cell. Use ``patch_sweep`` rather than this class directly.

    The patched-in values are either given (``source_activations``: hook name -> ``[batch,
    ...]``, already ablated) or computed from ``source_tokens`` in the base run's forward
    (then ``ablation`` applies to them).
    """

    def __init__(
        self,
        model,
        base_tokens: Tensor,
        attention_mask: Tensor,
        cells: Sequence[PatchSite],
        scorer: PositionalScorer | FullLogitScorer,
        *,
        source_activations: Mapping[str, Tensor] | None = None,
        source_tokens: Tensor | None = None,
        ablation: Ablation = "resample",
    ):
        if (source_activations is None) == (source_tokens is None):
            raise ValueError("pass exactly one of source_activations and source_tokens")
        self.model = model
        self.tokens = base_tokens
        self.cells = list(cells)
        self.table = CellTable(self.cells)
        self.scorer = scorer
        self.base = BaseRun(
            model,
            base_tokens,
            attention_mask,
            set(self.table.hooks),
            {site.layer for site in self.cells},
            source_tokens=source_tokens,
        )
        if source_activations is None:
            source_activations = {
                n: ablated_source(self.base.source_cache[n], ablation) for n in self.table.hooks
            }
            self.source_logits = self.base.source_logits
        self.base_logits, self.base_cache = self.base.logits, self.base.cache
        layers = self.table.layer.tolist()
        if len({(layer, hook) for layer, hook in zip(layers, self.table.hook.tolist(), strict=True)}) != len(
            set(layers)
        ):
            raise ValueError("cells of one patcher must patch one hook per layer")
        if self.table.hooks:
            self.source = torch.stack([source_activations[n].to(model.dtype) for n in self.table.hooks])
            self.base_values = torch.stack([self.base_cache[n] for n in self.table.hooks])

    # ------------------------------------------------------------------ planning
    def _plan(self) -> tuple[Tensor, Tensor, RowSet]:
        """``(cell, example, rows)`` of the rows that can change the metric.

        A row starts at the first position where its patched values differ from the base
        run's; a row that differs nowhere, or only after the position the metric reads,
        cannot change the result and is left out (its cell keeps the base value)."""
        differs = self.table.selection(self.base_values != self.source)
        first = self.table.first_changed(differs).cpu()  # [cell, batch]
        runnable = first >= 0
        if isinstance(self.scorer, PositionalScorer):
            runnable &= first <= self.scorer.positions[None]
        cell, example = runnable.nonzero(as_tuple=True)
        return cell, example, RowSet(layer=self.table.layer[cell], start=first[cell, example])

    # ------------------------------------------------------------------ running
    def _patch_hooks(self, cells: Tensor, examples: Tensor, start: int) -> list[tuple[str, object]]:
        """One hook per patched hook point; each writes the source values into its rows
        (the rows entering at its layer, the last ones of the batch there) with one ``where``."""
        device = self.model.device
        hooks_of_rows = self.table.hook[cells]
        source = self.source[hooks_of_rows.to(device), examples.to(device)]  # [row, *activation axes]
        position_dim = 1 + self.table.position_axis
        source = source[(slice(None),) * position_dim + (slice(start, None),)]
        masks = self.table.masks(cells, source.shape[1:], start, device)
        hooks = []
        first = 0
        for hook, count in run_lengths(hooks_of_rows.tolist()):
            rows = slice(first, first + count)

            def patch(activation: Tensor, hook, rows=rows) -> Tensor:
                end = activation.shape[0]  # this layer's rows joined last
                target = activation[end - (rows.stop - rows.start) :]
                mask, values = masks[rows].to(target.device), source[rows].to(target.device)  # block devices
                target.copy_(torch.where(mask, values, target))
                return activation

            hooks.append((self.table.hooks[hook], patch))
            first += count
        return hooks

    def _run_chunk(self, cells: Tensor, examples: Tensor, layers: Tensor, start: int) -> Tensor:
        """The final residual stream ``[row, pos - start, d_model]`` of rows sorted by layer."""
        hooks = self._patch_hooks(cells, examples, start)
        return self.base.forward_rows(layers.tolist(), examples, start, hooks)

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
        base_value = self.scorer.run_values(self.base_logits)
        values = base_value.expand(len(self.cells), *base_value.shape).clone()  # unrun cells keep it
        if not self.cells:
            self.rows_run = self.chunks_run = self.rows_per_chunk = 0
            return values, base_value
        cell, example, rows = self._plan()
        positional = isinstance(self.scorer, PositionalScorer)
        pending = None if positional else _PendingCells(self, cell)
        read_residuals, read_order = [], []
        n_pos = self.tokens.shape[1]
        model = self.model

        def run_chunk(chunk: Tensor, start: int) -> None:
            residual = self._run_chunk(cell[chunk], example[chunk], rows.layer[chunk], start)
            if positional:  # keep the read position only; unembed all rows at the end
                read = (self.scorer.positions[example[chunk]] - start).to(residual.device)
                read_residuals.append(residual[torch.arange(len(chunk), device=residual.device), read])
                read_order.append(chunk)
            else:
                logits = model.unembed(model.ln_final(residual))
                pending.add(cell[chunk], example[chunk], logits, start, values)

        n_logits = 1 if positional else n_pos
        stats = run_rows(
            rows,
            run_chunk,
            row_bytes=lambda positions: bytes_per_row(model, positions, min(n_logits, positions), n_pos),
            n_positions=n_pos,
            device=model.device,
            max_rows=max_batch_rows,
            max_memory=max_memory,
            progress=progress,
            description=description,
        )
        if positional and read_order:
            order = torch.cat(read_order)
            self._score_read_positions(cell[order], example[order], torch.cat(read_residuals), values)
        if pending is not None:
            pending.finish()
        self.rows_run, self.chunks_run, self.rows_per_chunk = stats.rows, stats.chunks, stats.rows_per_chunk
        return values, base_value

    def _score_read_positions(
        self, cells: Tensor, examples: Tensor, residual: Tensor, values: Tensor, block: int = 4096
    ) -> None:
        """Unembed the read positions of all rows (in blocks of rows) and score them."""
        for first in range(0, len(cells), block):
            part = slice(first, first + block)
            logits = self.model.unembed(self.model.ln_final(residual[part][:, None]))
            values[cells[part], examples[part]] = self.scorer.row_values(logits, examples[part])


class _PendingCells:
    """Assembles full logits per cell from its rows, then scores the cell (full-logit
    metrics are called once per cell, as in TransformerLens). A chunk's rows get their
    unpatched prefix in one operation; a cell's logits are then its rows stacked (views
    until the cell is complete)."""

    def __init__(self, patcher: BatchedPatcher, cells: Tensor):
        self.patcher = patcher
        self.rows: dict[int, dict[int, Tensor]] = defaultdict(dict)  # cell -> example -> [pos, vocab]
        self.remaining: dict[int, int] = defaultdict(int)
        for c in cells.tolist():
            self.remaining[c] += 1

    def add(self, cells: Tensor, examples: Tensor, logits: Tensor, start: int, values: Tensor) -> None:
        base = self.patcher.base_logits
        full = torch.cat([base[examples.to(base.device), :start], logits], dim=1)  # [row, pos, vocab]
        for i, (c, example) in enumerate(zip(cells.tolist(), examples.tolist(), strict=True)):
            self.rows[c][example] = full[i]
            self.remaining[c] -= 1
            if self.remaining[c] == 0:
                values[c] = self.patcher.scorer.run_values(self._cell_logits(self.rows.pop(c)))

    def _cell_logits(self, rows: dict[int, Tensor]) -> Tensor:
        base = self.patcher.base_logits
        if len(rows) == base.shape[0] == 1:
            return rows[0][None]
        if len(rows) == base.shape[0]:
            return torch.stack([rows[example] for example in range(base.shape[0])])
        logits = base.clone()  # examples the patch cannot change keep the unpatched logits
        logits[list(rows)] = torch.stack(list(rows.values()))
        return logits

    def finish(self) -> None:
        if self.rows:
            raise RuntimeError(f"cells {sorted(self.rows)} never received all their rows")
