"""The masked executor: batched forwards in which chosen edges carry other values.

Every input of a transformer component (a head's query, key or value input, an MLP input,
the final residual stream) is the sum of what the nodes before it wrote into the residual
stream. Patching an *edge* (source -> destination input) makes that destination read the
source's *patched* value instead of its value in the current run, while every other
component still reads the current value:

    input = current_input + sum_e mask[row, e] * (patched[source_e] - current[source_e])

Each row of a batched forward has its own mask over the edges, so one forward evaluates many
circuits (edge patching, ACDC, faithfulness curves: ``circuits.patch_edges``) or many senders
(path patching: one row per sender, whose edges go to the receivers:
``mechinterp.patching.path_patch``). This module is the one place that decides how a patched
value reaches a destination; attribution graphs and anything else that routes a patched or
frozen value to a receiver build on it.

Sources come in two kinds:

- *live* sources (``EdgeLayout.recorders``) are recorded as a row runs, because their current
  value depends on the row's own earlier patches: the embedding, head outputs
  (``attn.hook_result``), MLP outputs. They are kept per row in one buffer
  ``[row, source, batch*pos*d_model]`` as ``patched - current``, and a destination adds
  ``mask[row, slot, source] @ buffer[row]``: one batched matrix product per layer for the
  q/k/v inputs (they read the same sources) and one per MLP input, whatever the number of
  edges;
- *fixed* sources lie before every row's entry layer, so their current value is the base
  run's and ``patched - current`` is known before the run (``fixed``): path patching's
  senders, the sources before ACDC's ``start_layer``. Their contribution is one matrix
  product shared by all rows, sparse when few edges are on (a path-patching row patches one
  sender).

Position-aware masks (``[row, edge, span]`` with ``spans``, ``[batch, pos]`` span ids of the
positions, ``mechinterp.data.PositionSpans``) patch an edge only at the positions of the spans
it is on: at position ``p`` of example ``b`` a destination adds
``mask[row, slot, source, spans[b, p]] * (patched - current)[source, b, p]``, one batched
product per span over that span's positions, so the cost stays one product's worth. A mask
that is the same for every span patches exactly what the position-free mask does.

Rows run on the row runner (``mechinterp.patching.rows``: memory budget, grouping,
out-of-memory halving, progress), each over the whole batch of examples, entering the model
at their entry layer with the base run's residual stream (``BaseRun.forward_rows``) and
computing positions from their first changed one: earlier keys and values come from the base
run, so a shared prompt prefix is computed once.

Example:
    >>> final = Destination("blocks.1.hook_resid_post", 2, False, edge_ids, final=True)
    >>> layout = EdgeLayout(n_sources=1, n_fixed=1, destinations=(final,))
    >>> values = run_masked(model, layout, masks, base, rows, read=positions, score=score, fixed=deltas)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechinterp.patching.base_run import BaseRun
from mechinterp.patching.memory import bytes_per_row
from mechinterp.patching.rows import RowSet, RowStats, run_rows


def destination_hook(layer: int | None, channel: str, n_layers: int) -> str:
    """The hook holding the input of one destination channel: per-head ``q``/``k``/``v``
    inputs, the MLP input, or (``logits``) the residual stream after the last block."""
    if channel == "logits":
        return f"blocks.{n_layers - 1}.hook_resid_post"
    return f"blocks.{layer}.hook_mlp_in" if channel == "mlp" else f"blocks.{layer}.hook_{channel}_input"


@dataclass(frozen=True)
class Destination:
    """The edges read at one destination input: ``edge_ids[slot, source]`` is the edge from
    that source into that slot (a head for per-head q/k/v inputs, the only slot otherwise), or
    -1 for none. ``layer`` is the block the input belongs to; the ``final`` destination (the
    unembedding's input, ``layer`` = ``n_layers``) is patched after the last block, so rows
    that enter after it see it too."""

    hook: str
    layer: int
    per_head: bool
    edge_ids: Int[Tensor, "slot source"]
    final: bool = False

    @property
    def n_sources(self) -> int:
        return self.edge_ids.shape[1]


@dataclass(frozen=True)
class Recorder:
    """A hook whose value is a live source's output. ``embed``: the input node (``pos_embed``
    adds the learned positions to it); ``heads``: ``attn.hook_result``, the sources ``first``
    to ``first + n_heads``; ``output``: one source (``hook_mlp_out``)."""

    hook: str
    layer: int
    first: int  # index among all sources
    kind: Literal["embed", "pos_embed", "heads", "output"]


@dataclass(frozen=True)
class EdgeLayout:
    """What the executor needs of a graph: ``n_sources`` sources, the first ``n_fixed`` of
    them fixed (``patched - current`` given before the run), the others recorded live by
    ``recorders``; ``destinations`` in forward order."""

    n_sources: int
    n_fixed: int
    destinations: tuple[Destination, ...]
    recorders: tuple[Recorder, ...] = ()

    @property
    def n_live(self) -> int:
        return self.n_sources - self.n_fixed

    def edges_before(self, layer: int) -> Tensor:
        """The ids of the edges into inputs of blocks before ``layer``."""
        ids = [d.edge_ids[d.edge_ids >= 0] for d in self.destinations if d.layer < layer]
        return torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long, device="cpu")


SPARSE_DENSITY = 0.1  # fixed-source masks sparser than this use a sparse product


def fixed_product(
    masks: Float[Tensor, "row slot source"], deltas: Float[Tensor, "source flat"]
) -> Float[Tensor, "row slot flat"]:
    """``masks @ deltas`` over the source axis: dense, or sparse when few entries are on."""
    rows, slots, _ = masks.shape
    flat = masks.reshape(rows * slots, -1)
    if flat.numel() and int(flat.count_nonzero()) < SPARSE_DENSITY * flat.numel():
        targets, sources = flat.nonzero(as_tuple=True)  # gather the few deltas that are on
        weighted = flat[targets, sources, None] * deltas[sources]
        product = flat.new_zeros(flat.shape[0], deltas.shape[1]).index_add_(0, targets, weighted)
    else:
        product = flat @ deltas
    return product.view(rows, slots, -1)


class _MaskedHooks:
    """The hooks of one batched forward of ``rows`` masks, each over ``batch`` examples,
    computing positions ``start:``.

    ``ablated``: ``[live source, batch*pos*d_model]`` patched values of the live sources;
    ``fixed``: ``[fixed source, batch*pos*d_model]`` their ``patched - current``. The q/k/v
    inputs of a layer read the same sources, so their patches come from one product, at the
    first of them to fire."""

    def __init__(
        self,
        layout: EdgeLayout,
        masks: Tensor,
        ablated: Tensor | None,
        fixed: Tensor | None,
        batch,
        spans: Tensor | None = None,
    ):
        self.layout, self.rows, self.batch = layout, masks.shape[0], batch
        self.ablated, self.fixed = ablated, fixed
        self.buffer = (
            None if ablated is None else ablated.new_empty(self.rows, layout.n_live, ablated.shape[1])
        )
        # position-aware masks [row, edge, span]: each span's (batch*pos) indices, for spans present
        self.spans = None
        if spans is not None:
            self.spans = [(s, (spans == s).nonzero().flatten()) for s in range(masks.shape[2])]
            self.spans = [(s, where) for s, where in self.spans if len(where)]
            self.n_flat = spans.shape[0]
        extra = masks.new_zeros(self.rows, 1, *masks.shape[2:])
        padded = torch.cat([masks, extra], dim=1)  # column -1 = "no edge"
        parts: dict[str, list[Tensor]] = {}  # lead hook -> masks [row, slot, source] per destination
        self.fused: dict[str, list[tuple[str, int, int]]] = {}  # lead hook -> (hook, first slot, slots)
        leads: dict[object, str] = {}
        for destination in layout.destinations:
            key = (destination.layer, "heads") if destination.per_head else destination.hook
            lead = leads.setdefault(key, destination.hook)
            members = self.fused.setdefault(lead, [])
            offset = sum(slots for _, _, slots in members)
            members.append((destination.hook, offset, destination.edge_ids.shape[0]))
            parts.setdefault(lead, []).append(padded[:, destination.edge_ids])
        self.masks = {lead: torch.cat(tables, 1) for lead, tables in parts.items()}
        self.pending: dict[str, Tensor] = {}

    def hooks(self) -> list:
        recorders = [(r.hook, self._recorder(r)) for r in self.layout.recorders]
        patches = [(d.hook, self._patch) for d in self.layout.destinations if not d.final]
        return recorders + patches

    def _kept(self, value: Tensor) -> Tensor:
        """``[row*batch, pos, ...]`` -> ``[row, batch, pos, ...]`` (a view)."""
        return value.view(value.shape[0] // self.batch, self.batch, *value.shape[1:])

    def _store(self, first: int, value: Tensor) -> None:
        """``buffer[:n, first:first+k] = ablated - value`` for ``value`` ``[n, k, batch*pos*d]``."""
        n, k = value.shape[:2]
        live = first - self.layout.n_fixed
        torch.sub(
            self.ablated[live : live + k], value.to(self.buffer.device), out=self.buffer[:n, live : live + k]
        )

    def _recorder(self, recorder: Recorder):
        def record(value: Tensor, hook) -> Tensor:
            kept = self._kept(value)
            n = kept.shape[0]
            if recorder.kind == "heads":  # [row, batch, pos, head, d] -> [row, head, batch*pos*d]
                self._store(recorder.first, kept.permute(0, 3, 1, 2, 4).reshape(n, value.shape[2], -1))
            elif recorder.kind == "pos_embed":  # learned positions: the input's output is embed + pos_embed
                self.buffer[:n, recorder.first - self.layout.n_fixed] -= kept.reshape(n, -1).to(
                    self.buffer.device
                )
            else:
                self._store(recorder.first, kept.reshape(n, 1, -1))
            return value

        return record

    def _delta(self, lead: str, n: int) -> Tensor:
        """``[n, slot, batch*pos*d]``: the patch of the first ``n`` rows at ``lead`` and its
        fused siblings."""
        masks = self.masks[lead][:n]  # [row, slot, sources before this input(, span)]
        if self.spans is not None:
            return self._span_delta(masks, n)
        n_fixed = min(self.layout.n_fixed, masks.shape[2])
        delta = None
        if n_fixed:
            delta = fixed_product(masks[..., :n_fixed], self.fixed[:n_fixed])
        if masks.shape[2] > n_fixed:
            live = torch.bmm(masks[..., n_fixed:], self.buffer[:n, : masks.shape[2] - n_fixed])
            delta = live if delta is None else delta + live
        return delta

    def _span_delta(self, masks: Tensor, n: int) -> Tensor:
        """``_delta`` for position-aware masks ``[row, slot, source, span]``: per span, the
        product over the positions of that span only."""
        slots, n_sources = masks.shape[1], masks.shape[2]
        n_fixed = min(self.layout.n_fixed, n_sources)
        n_live = n_sources - n_fixed
        q = self.n_flat
        width = (self.buffer if self.buffer is not None else self.fixed).shape[-1] // q
        dtype = (self.buffer if self.buffer is not None else self.fixed).dtype
        out = masks.new_zeros(n, slots, q, width, dtype=dtype)
        for span, where in self.spans:
            m = masks[..., span]
            if not bool(m.any()):
                continue
            where = where.to(out.device)
            part = None
            if n_fixed:
                fixed = self.fixed[:n_fixed].view(n_fixed, q, width)[:, where].reshape(n_fixed, -1)
                part = fixed_product(m[..., :n_fixed], fixed)
            if n_live:
                live = self.buffer[:n, :n_live].view(n, n_live, q, width)[:, :, where].reshape(n, n_live, -1)
                product = torch.bmm(m[..., n_fixed:], live)
                part = product if part is None else part + product
            out[:, :, where] = part.view(n, slots, len(where), width)
        return out.view(n, slots, q * width)

    def _patch(self, value: Tensor, hook) -> Tensor:
        """Add the patch in place (under ``no_grad``; the hooked tensors are fresh copies).
        Rows join at their entry layer, so the rows present are the first ``n``."""
        kept = self._kept(value)
        n = kept.shape[0]
        if hook.name in self.masks:  # compute this hook's patch and its fused siblings'
            delta = self._delta(hook.name, n)
            for name, first, slots in self.fused[hook.name]:
                self.pending[name] = delta[:, first : first + slots]  # [row, slot, batch*pos*d]
        delta = self.pending.pop(hook.name).to(value.device)  # blocks may sit on other devices
        if value.ndim == 3:
            kept += delta.view(kept.shape)
        else:
            shape = (n, delta.shape[1], self.batch, kept.shape[2], value.shape[3])
            kept += delta.view(shape).permute(0, 2, 3, 1, 4)
        return value

    def finish(self, residual: Tensor) -> Tensor:
        """The final residual stream ``[row*batch, pos, d_model]`` with the final
        destination's patch added (the unembedding's input)."""
        final = next((d for d in self.layout.destinations if d.final), None)
        if final is None:
            return residual
        delta = self._delta(final.hook, self.rows).to(residual.device)
        return residual + delta.view(residual.shape)


@contextmanager
def _inputs_and_results_on(model, layout: EdgeLayout) -> Iterator[None]:
    """Per-head inputs on the blocks with a per-head destination, per-head results on those
    whose heads are recorded; the previous settings come back afterwards."""
    blocks = model.blocks
    previous = [(block.use_split_qkv_input, block.attn.use_attn_result) for block in blocks]
    for destination in layout.destinations:
        if destination.per_head:
            blocks[destination.layer].use_split_qkv_input = True
    for recorder in layout.recorders:
        if recorder.kind == "heads":
            blocks[recorder.layer].attn.use_attn_result = True
    try:
        yield
    finally:
        for block, (split, result) in zip(blocks, previous, strict=True):
            block.use_split_qkv_input, block.attn.use_attn_result = split, result


def _flat(values: Tensor | None, start: int) -> Tensor | None:
    """``[source, batch, pos, d]`` -> ``[source, batch*(pos - start)*d]``."""
    return None if values is None else values[:, :, start:].reshape(values.shape[0], -1)


def _check_inputs(layout: EdgeLayout, masks: Tensor, ablated, fixed, rows: RowSet) -> None:
    if (ablated is None) != (layout.n_live == 0) or (fixed is None) != (layout.n_fixed == 0):
        raise ValueError("give patched values for exactly the live sources and deltas for the fixed ones")
    if layout.recorders and len(rows) and bool((rows.layer != rows.layer[0]).any()):
        raise ValueError("rows with live sources must share one entry layer")
    if len(rows) != masks.shape[0]:
        raise ValueError(f"{len(rows)} rows but {masks.shape[0]} masks")


def run_masked(
    model,
    layout: EdgeLayout,
    masks: Float[Tensor, "row edge *span"],
    base: BaseRun,
    rows: RowSet,
    *,
    read: Int[Tensor, " batch"],
    score: Callable[[Tensor, Tensor], Tensor],
    ablated: Float[Tensor, "_ batch pos d_model"] | None = None,
    fixed: Float[Tensor, "_ batch pos d_model"] | None = None,
    entering: Mapping[int, Tensor] | None = None,
    max_rows: int | Literal["auto"] = "auto",
    max_memory: int | None = None,
    progress: bool = False,
    description: str = "masked patching",
    spans: Int[Tensor, "batch pos"] | None = None,
) -> tuple[Float[Tensor, "row batch"], RowStats]:
    """Run every row's masked forward over the whole batch and score it.

    Args:
        masks: ``[row, edge]`` weights (1 = the edge carries the patched value), or
            ``[row, edge, span]`` per span of positions (with ``spans``).
        base: the unpatched run rows branch off (residual streams entering the rows' entry
            layers, keys and values of the positions before a row's start).
        rows: each row's entry layer and first position (at most ``read.min()``).
        read: the position of each example the metric reads.
        score: ``score(final_residual [n, d_model], examples [n]) -> [n]`` values (the
            residual before the final norm, at the read positions).
        ablated: patched values of the live sources (``layout.n_fixed:``).
        fixed: ``patched - current`` of the fixed sources (``:layout.n_fixed``).
        entering: residual streams ``[batch, pos - start, d_model]`` that rows entering at
            a layer take instead of the base run's (ACDC's shared masked prefix).
        spans: ``[batch, pos]`` span ids of the positions, for position-aware masks.

    Returns:
        ``(values [row, batch], stats)``.
    """
    _check_inputs(layout, masks, ablated, fixed, rows)
    batch, n_pos = base.tokens.shape
    if len(rows) and int(rows.start.max()) > int(read.min()):
        raise ValueError("a row starts after a position the metric reads")
    values = torch.empty(len(rows), batch, dtype=torch.float32, device="cpu")
    read = read.to(model.device)
    element = torch.finfo(model.dtype).bits // 8
    d_model = model.architecture.d_model
    slots = max((d.edge_ids.shape[0] for d in layout.destinations), default=0) * 3

    def run_chunk(chunk: Tensor, start: int) -> None:
        hooks = _MaskedHooks(
            layout,
            masks[chunk.to(masks.device)],
            _flat(ablated, start),
            _flat(fixed, start),
            batch,
            _span_ids(spans, start, masks),
        )
        n = len(chunk)
        examples = torch.arange(batch, device=model.device).repeat(n)
        layers = rows.layer[chunk].repeat_interleave(batch).tolist()
        residual = base.forward_rows(layers, examples, start, hooks.hooks(), entering=entering)
        residual = hooks.finish(residual)
        at_read = residual[torch.arange(n * batch, device=residual.device), (read - start).repeat(n)]
        values[chunk] = score(at_read, examples).float().cpu().view(n, batch)

    with _inputs_and_results_on(model, layout):
        stats = run_rows(
            rows,
            run_chunk,
            row_bytes=lambda computed: (
                batch
                * (
                    element * computed * d_model * (layout.n_live + slots)
                    + 2 * bytes_per_row(model, computed, 1, n_pos)
                )
            ),
            n_positions=n_pos,
            device=model.device,
            max_rows=max_rows,
            max_memory=max_memory,
            progress=progress,
            description=description,
        )
    return values, stats


def _span_ids(spans: Tensor | None, start: int, masks: Tensor) -> Tensor | None:
    """Span ids of the computed positions, flattened as the buffers are (batch-major)."""
    if (spans is not None) != (masks.ndim == 3):
        raise ValueError("position-aware masks [row, edge, span] need spans, and spans need them")
    return None if spans is None else spans[:, start:].reshape(-1)


def masked_prefix(
    model,
    layout: EdgeLayout,
    mask: Float[Tensor, " edge *span"],
    base: BaseRun,
    *,
    ablated: Float[Tensor, "_ batch pos d_model"],
    start: int,
    stop: int,
    n_before: int,
    spans: Int[Tensor, "batch pos"] | None = None,
) -> tuple[Float[Tensor, "batch _ d_model"], Float[Tensor, "_ batch pos d_model"]]:
    """One masked forward (every source live) up to block ``stop``, computing positions
    ``start:``: the residual stream entering ``stop`` (positions ``start:``) and
    ``patched - current`` of the first ``n_before`` sources (those before ``stop``; zero
    before ``start``, where nothing differs). Rows that agree on the edges into blocks
    before ``stop`` share it (ACDC), taking these sources as fixed."""
    batch, n_pos = base.tokens.shape
    hooks = _MaskedHooks(
        layout, mask[None], _flat(ablated, start), None, batch, _span_ids(spans, start, mask[None])
    )
    examples = torch.arange(batch, device=model.device)
    with _inputs_and_results_on(model, layout):
        residual = base.forward_rows([0] * batch, examples, start, hooks.hooks(), stop=stop)
    deltas = hooks.buffer.new_zeros(n_before, batch, n_pos, model.architecture.d_model)
    deltas[:, :, start:] = hooks.buffer[0, :n_before].view(n_before, batch, n_pos - start, -1)
    return residual, deltas
