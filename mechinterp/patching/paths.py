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
from tqdm.auto import tqdm

from mechinterp.metrics import PositionalMetric
from mechinterp.patching.engine import BaseRun, site_index
from mechinterp.patching.result import PatchResult
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
        difference = torch.zeros_like(source[site.hook_name])
        index = (slice(None), *site_index(site))
        difference[index] = source[site.hook_name][index] - base[site.hook_name][index]
        if site.kind == "z":  # a head's output is its z through its slice of W_O
            difference = model.blocks[site.layer].attn.head_outputs(difference).sum(2)
        deltas.append(difference)
    return torch.stack(deltas)


def _receiver_hooks(model, receivers, senders, rows_sender: Tensor, delta: Tensor, start: int) -> list:
    """Hooks adding each row's sender delta to the receivers that the sender feeds."""
    by_hook: dict[str, list[tuple[Receiver, Tensor]]] = {}
    for receiver in receivers:
        if receiver.kind == "logits":
            continue
        feeds = torch.tensor(
            [receiver.reads(senders[s], model) for s in rows_sender.tolist()],
            dtype=delta.dtype,
            device=delta.device,
        )
        by_hook.setdefault(receiver.hook_name(), []).append((receiver, feeds))

    def make(entries):
        def add(activation: Tensor, hook) -> Tensor:
            n = activation.shape[0]  # rows join at their entry layer: the active rows come first
            for receiver, feeds in entries:
                change = (delta[:n, start:] * feeds[:n, None, None]).to(activation.device)
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
    max_batch_rows: int = 256,
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
    base = BaseRun(model, base_tokens, mask, sender_hooks, {e for e in entries if e is not None})
    source_logits, source_cache = model.run_with_cache(
        source_tokens, attention_mask=mask, names_filter=list(sender_hooks)
    )
    deltas = sender_deltas(
        model, sites, {n: base.cache[n] for n in sender_hooks}, {n: source_cache[n] for n in sender_hooks}
    )
    base_value = scorer.run_values(base.logits)
    values = base_value.expand(len(sites), *base_value.shape).clone()

    rows = []  # (sender, example, first position its delta is nonzero, entry layer)
    for s in range(len(sites)):
        if entries[s] is None:
            continue
        changed = deltas[s].abs().amax(-1) > 0  # [batch, pos]
        for example in range(base_tokens.shape[0]):
            if changed[example].any():
                start = int(changed[example].int().argmax())
                if scorer.can_change(example, start):
                    rows.append((s, example, start, entries[s]))
    rows.sort(key=lambda row: (row[2], row[3]))
    previous_split = [block.use_split_qkv_input for block in model.blocks]
    for receiver in receivers:  # per-head inputs only where a head input receives
        if receiver.kind in ("q", "k", "v"):
            model.blocks[receiver.layer].use_split_qkv_input = True
    try:
        with tqdm(total=len(rows), desc="path patching", unit="row", disable=not progress) as bar:
            done = 0
            while done < len(rows):
                chunk = [r for r in rows[done : done + max_batch_rows] if r[2] == rows[done][2]]
                start = chunk[0][2]
                senders_idx = torch.tensor([r[0] for r in chunk])
                examples = torch.tensor([r[1] for r in chunk], device=base_tokens.device)
                delta = deltas[senders_idx, examples]  # [row, pos, d_model]
                hooks = _receiver_hooks(model, receivers, sites, senders_idx, delta, start)
                residual = base.forward_rows([r[3] for r in chunk], examples, start, hooks)
                if any(receiver.kind == "logits" for receiver in receivers):
                    residual = residual + delta[:, start:]
                read = scorer.logit_positions(examples, start)[:, 0].to(residual.device)
                final = residual[torch.arange(len(chunk), device=residual.device), read][:, None]
                row_values = scorer.row_values(model.unembed(model.ln_final(final)), examples.cpu())
                values[senders_idx, examples.cpu()] = row_values
                done += len(chunk)
                bar.update(len(chunk))
    finally:
        for block, split in zip(model.blocks, previous_split, strict=True):
            block.use_split_qkv_input = split
    return PatchResult(
        values=values.reshape(*shape, base_tokens.shape[0]),
        axes=tuple(axes),
        labels=labels,
        base=base_value,
        source=scorer.run_values(source_logits),
        per_example=True,
        metadata={
            "kind": "path",
            "direction": direction,
            "receivers": [str(r) for r in receivers],
            "model": model.architecture.model_name,
            "metric": type(metric).__name__,
            "examples": int(base_tokens.shape[0]),
            "rows_run": len(rows),
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
            examples_sender = torch.zeros(base.shape[0], dtype=torch.long)
            hooks = _receiver_hooks(model, receivers, [site], examples_sender, delta, 0)
            if any(receiver.kind == "logits" for receiver in receivers):
                hooks.append((final_hook, lambda activation, hook, delta=delta: activation + delta))
            logits = model.run_with_hooks(base, attention_mask=mask, fwd_hooks=hooks)
            values.append(scorer.run_values(logits))
    return torch.stack(values)
