"""Path patching: how much of a sender's effect flows directly into chosen receivers.

Path patching (Wang et al. 2022, IOI; Goldowsky-Dill et al. 2023) patches *edges* rather
than nodes. A sender (an attention head's output, an MLP's or attention layer's output)
takes its source-run value on its edges into the receivers only: each receiver reads
``its ordinary input + (sender_source - sender_base)``, while every other component reads
the sender's base value. Everything is recomputed exactly (nothing is linearised); the
receivers' changed outputs then propagate through the rest of the model as usual.
Receivers are head inputs (``q``, ``k`` or ``v`` of one head or of a layer's heads), MLP
inputs, or the final residual stream (``logits``: the direct path to the unembedding).
With every downstream input as a receiver, path patching equals activation patching of
the sender (a test checks this).

A sweep over senders runs batched: one row per sender and example, all rows starting at the
earliest receiver layer (nothing before it can change) and at the first position where the
sender's output differs.

Example:
    >>> receivers = [Receiver("q", layer=9, head=6), Receiver("k", layer=9, head=6)]
    >>> result = path_patch(model, clean, corrupt, SweepSpec(kind="z", per_position=False), receivers, metric)
    >>> result.mean()      # [layer, head] of senders
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mechinterp.metrics import PositionalMetric
from mechinterp.patching.engine import BaseRun, site_index
from mechinterp.patching.memory import bytes_per_row
from mechinterp.patching.result import PatchResult
from mechinterp.patching.rows import RowSet, run_rows
from mechinterp.patching.scoring import PositionalScorer
from mechinterp.patching.sites import PatchSite, SweepSpec
from mechinterp.patching.sweep import Direction, TextOrTokens, axis_labels, base_and_source, prepare_pair

ReceiverKind = Literal["q", "k", "v", "mlp", "logits"]
SENDER_KINDS = ("z", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Receiver:
    """An input that receives the sender's change: head ``q``/``k``/``v`` inputs (``head`` a
    query head for ``q``, a key/value head for ``k``/``v``; ``None`` = every head of the
    layer), an MLP input, or ``logits`` (the final residual stream; no layer)."""

    kind: ReceiverKind
    layer: int | None = None
    head: int | None = None

    def hook_name(self) -> str | None:
        if self.kind == "logits":
            return None
        return (
            f"blocks.{self.layer}.hook_mlp_in"
            if self.kind == "mlp"
            else f"blocks.{self.layer}.hook_{self.kind}_input"
        )

    def entry_layer(self, model) -> int:
        """The first block whose computation this receiver changes."""
        return model.architecture.n_layers if self.kind == "logits" else self.layer

    def reads(self, sender: PatchSite, model) -> bool:
        """Whether the sender writes into this input directly (is upstream of it)."""
        if self.kind == "logits":
            return True
        attention_sender = sender.kind in ("z", "attn_out")
        if self.kind == "mlp" and attention_sender and not model.architecture.parallel_attn_mlp:
            return self.layer >= sender.layer
        return self.layer > sender.layer

    def validate(self, model) -> None:
        arch = model.architecture
        if self.kind not in ("q", "k", "v", "mlp", "logits"):
            raise ValueError(f"unknown receiver kind {self.kind!r}; choose q, k, v, mlp or logits")
        if self.kind == "logits":
            if self.layer is not None or self.head is not None:
                raise ValueError("a logits receiver takes no layer or head")
            return
        if self.layer is None or not 0 <= self.layer < arch.n_layers:
            raise ValueError(f"{self}: layer {self.layer} does not exist (model has {arch.n_layers} layers)")
        n_heads = arch.kv_heads if self.kind in ("k", "v") else arch.n_heads
        if self.kind == "mlp" and self.head is not None:
            raise ValueError(f"{self}: an MLP receiver has no head")
        if self.head is not None and not 0 <= self.head < n_heads:
            raise ValueError(
                f"{self}: head {self.head} does not exist ({self.kind} inputs have {n_heads} heads)"
            )


def sender_deltas(
    model, sites: Sequence[PatchSite], base: dict[str, Tensor], source: dict[str, Tensor]
) -> Tensor:
    """``[sender, batch, pos, d_model]``: each sender's change to the residual stream."""
    deltas = []
    for site in sites:
        index = (slice(None), *site_index(site))
        if site.kind == "z":  # the layer's output change when only these heads' z change
            changed = base[site.hook_name].clone()
            changed[index] = source[site.hook_name][index]
            deltas.append(model.blocks[site.layer].attn.output_change(base[site.hook_name], changed))
            continue
        difference = torch.zeros_like(source[site.hook_name])
        difference[index] = source[site.hook_name][index] - base[site.hook_name][index]
        deltas.append(difference)
    return torch.stack(deltas)


def _receiver_hooks(model, receivers, feeds: Tensor, delta: Tensor, start: int) -> list:
    """Hooks adding each row's sender delta to the receivers that its sender feeds.

    ``feeds``: ``[receiver, row]`` (1 where the row's sender writes into that receiver);
    ``delta``: ``[row, pos, d_model]`` full-length sender changes."""
    by_hook: dict[str, list[tuple[Receiver, Tensor]]] = {}
    for i, receiver in enumerate(receivers):
        if receiver.kind != "logits":
            by_hook.setdefault(receiver.hook_name(), []).append((receiver, feeds[i]))

    def make(entries):
        def add(activation: Tensor, hook) -> Tensor:
            n = activation.shape[0]  # rows join at their entry layer: the active rows come first
            for receiver, feed in entries:
                change = (delta[:n, start:] * feed[:n, None, None]).to(activation.device)
                if receiver.kind == "mlp":
                    activation = activation + change
                else:
                    head = slice(None) if receiver.head is None else receiver.head
                    activation[:, :, head] = activation[:, :, head] + (
                        change[:, :, None] if receiver.head is None else change
                    )
            return activation

        return add

    return [(name, make(entries)) for name, entries in by_hook.items()]


@torch.no_grad()
def path_patch(
    model,
    clean: TextOrTokens,
    corrupt: TextOrTokens,
    senders: SweepSpec | Sequence[PatchSite],
    receivers: Sequence[Receiver],
    metric: PositionalMetric,
    *,
    direction: Direction = "denoise",
    attention_mask: Tensor | None = None,
    max_batch_rows: int | Literal["auto"] = "auto",
    max_memory: int | None = None,
    progress: bool = True,
) -> PatchResult:
    """Path-patch every sender into ``receivers`` and measure ``metric`` (see module docstring).

    Args:
        senders: a ``SweepSpec`` of kind ``z`` (heads), ``attn_out`` or ``mlp_out``, or a list
            of such sites.
        receivers: the inputs that see the senders' change (``Receiver``).
        metric: a positional metric (``mechinterp.metrics``).
        direction: ``"denoise"`` runs the corrupt prompt with clean sender values on the
            paths; ``"noise"`` the reverse (Wang et al.'s IOI setting).
        max_batch_rows, max_memory: chunking of the rows (sender x example), as in
            ``patch_sweep``.

    Returns:
        ``PatchResult`` over the senders' grid (values per example).
    """
    if not isinstance(metric, PositionalMetric):
        raise TypeError("path_patch needs a positional metric (mechinterp.metrics), e.g. LogitDifference")
    if not receivers:
        raise ValueError("path_patch needs at least one receiver")
    for receiver in receivers:
        receiver.validate(model)
    clean_tokens, corrupt_tokens, mask = prepare_pair(model, clean, corrupt, attention_mask)
    base_tokens, source_tokens = base_and_source(clean_tokens, corrupt_tokens, direction)
    n_pos = base_tokens.shape[1]
    if isinstance(senders, SweepSpec):
        grid = senders.enumerate(model, n_pos)
        sites, axes, shape, labels = grid.cells, grid.axes, grid.shape, axis_labels(model, grid, clean_tokens)
    else:
        sites, axes, shape = list(senders), ("sender",), (len(senders),)
        labels = {
            "sender": [f"{s.kind} L{s.layer}" + (f" H{s.head}" if s.head is not None else "") for s in sites]
        }
    for site in sites:
        site.validate(model, n_pos)
        if site.kind not in SENDER_KINDS:
            raise ValueError(f"senders must be of kind {', '.join(SENDER_KINDS)}; got {site.kind!r}")
    scorer = PositionalScorer(metric, base_tokens.shape[0], n_pos)
    sender_hooks = {site.hook_name for site in sites}
    # a row enters at the first block one of its sender's receivers changes
    entries = [
        min((r.entry_layer(model) for r in receivers if r.reads(site, model)), default=None) for site in sites
    ]
    base = BaseRun(
        model,
        base_tokens,
        mask,
        sender_hooks,
        {e for e in entries if e is not None},
        source_tokens=source_tokens,
    )
    deltas = sender_deltas(
        model,
        sites,
        {n: base.cache[n] for n in sender_hooks},
        {n: base.source_cache[n] for n in sender_hooks},
    )
    base_value = scorer.run_values(base.logits)
    values = base_value.expand(len(sites), *base_value.shape).clone()

    # rows: (sender, example) pairs whose delta is nonzero somewhere the metric can see
    changed = (deltas != 0).any(-1)  # [sender, batch, pos]
    first = torch.where(changed.any(-1), changed.int().argmax(-1), -1).cpu()
    entry = torch.tensor([-1 if e is None else e for e in entries], dtype=torch.long, device="cpu")
    runnable = (first >= 0) & (first <= scorer.positions[None]) & (entry[:, None] >= 0)
    sender, example = runnable.nonzero(as_tuple=True)
    rows = RowSet(layer=entry[sender], start=first[sender, example])
    feeds_table = torch.tensor(
        [[receiver.reads(site, model) for site in sites] for receiver in receivers],
        dtype=deltas.dtype,
        device=deltas.device,
    )  # [receiver, sender]
    direct = any(receiver.kind == "logits" for receiver in receivers)
    read_residuals, read_rows = [], []

    def run_chunk(chunk: Tensor, start: int) -> None:
        senders_idx, examples = sender[chunk], example[chunk]
        on_device = senders_idx.to(deltas.device), examples.to(deltas.device)
        delta = deltas[on_device]  # [row, pos, d_model]
        hooks = _receiver_hooks(model, receivers, feeds_table[:, on_device[0]], delta, start)
        residual = base.forward_rows(rows.layer[chunk].tolist(), examples, start, hooks)
        if direct:
            residual = residual + delta[:, start:]
        read = (scorer.positions[examples] - start).to(residual.device)
        read_residuals.append(residual[torch.arange(len(chunk), device=residual.device), read])
        read_rows.append(chunk)

    previous_split = [block.use_split_qkv_input for block in model.blocks]
    for receiver in receivers:  # per-head inputs only where a head input receives
        if receiver.kind in ("q", "k", "v"):
            model.blocks[receiver.layer].use_split_qkv_input = True
    try:
        stats = run_rows(
            rows,
            run_chunk,
            row_bytes=lambda computed: 2 * bytes_per_row(model, computed, 1, n_pos),
            n_positions=n_pos,
            device=model.device,
            max_rows=max_batch_rows,
            max_memory=max_memory,
            progress=progress,
            description="path patching",
        )
    finally:
        for block, split in zip(model.blocks, previous_split, strict=True):
            block.use_split_qkv_input = split
    if read_rows:
        order = torch.cat(read_rows)
        final = model.ln_final(torch.cat(read_residuals)[:, None])
        values[sender[order], example[order]] = scorer.row_values(model.unembed(final), example[order])
    return PatchResult(
        values=values.reshape(*shape, base_tokens.shape[0]),
        axes=tuple(axes),
        labels=labels,
        base=base_value,
        source=scorer.run_values(base.source_logits),
        per_example=True,
        metadata={
            "kind": "path",
            "direction": direction,
            "receivers": [str(r) for r in receivers],
            "model": model.architecture.model_name,
            "metric": type(metric).__name__,
            "examples": int(base_tokens.shape[0]),
            "rows_run": stats.rows,
            "chunks": stats.chunks,
        },
    )


@torch.no_grad()
def reference_path_patch(
    model,
    clean: TextOrTokens,
    corrupt: TextOrTokens,
    senders: Sequence[PatchSite],
    receivers: Sequence[Receiver],
    metric: PositionalMetric,
    *,
    direction: Direction = "denoise",
    attention_mask: Tensor | None = None,
) -> Tensor:
    """The slow literal reference: one full forward per sender, hooks adding the sender's
    change at each receiver it feeds. Values ``[sender, batch]``."""
    clean_tokens, corrupt_tokens, mask = prepare_pair(model, clean, corrupt, attention_mask)
    base, source = base_and_source(clean_tokens, corrupt_tokens, direction)
    scorer = PositionalScorer(metric, base.shape[0], base.shape[1])
    names = list({site.hook_name for site in senders})
    _, base_cache = model.run_with_cache(base, attention_mask=mask, names_filter=names)
    _, source_cache = model.run_with_cache(source, attention_mask=mask, names_filter=names)
    final_hook = f"blocks.{model.architecture.n_layers - 1}.hook_resid_post"
    values = []
    with model.per_head_hooks(split_inputs=True):
        for site in senders:
            delta = sender_deltas(
                model,
                [site],
                {site.hook_name: base_cache[site.hook_name]},
                {site.hook_name: source_cache[site.hook_name]},
            )[0]
            feeds = torch.tensor(
                [[float(receiver.reads(site, model))] * base.shape[0] for receiver in receivers],
                dtype=delta.dtype,
                device=delta.device,
            )
            hooks = _receiver_hooks(model, receivers, feeds, delta, 0)
            if any(receiver.kind == "logits" for receiver in receivers):
                hooks.append((final_hook, lambda activation, hook, delta=delta: activation + delta))
            logits = model.run_with_hooks(base, attention_mask=mask, fwd_hooks=hooks)
            values.append(scorer.run_values(logits))
    return torch.stack(values)
