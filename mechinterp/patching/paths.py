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
from jaxtyping import Float
from torch import Tensor

from mechinterp.dims import AttentionMask
from mechinterp.metrics import PositionalMetric
from mechinterp.patching.base_run import BaseRun
from mechinterp.patching.engine import site_index
from mechinterp.patching.masked import Destination, EdgeLayout, destination_hook, run_masked
from mechinterp.patching.result import PatchResult
from mechinterp.patching.rows import RowSet
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


def _receiver_hooks(model, receivers, feeds: Tensor, delta: Tensor) -> list:
    """The reference's hooks: each adds the sender's change to the receivers it feeds
    (``feeds``: ``[receiver]``; ``delta``: ``[batch, pos, d_model]``)."""
    hooks = []
    for receiver, feed in zip(receivers, feeds.tolist(), strict=True):
        if receiver.kind == "logits" or not feed:
            continue

        def add(activation: Tensor, hook, receiver=receiver) -> Tensor:
            if receiver.kind == "mlp":
                return activation + delta
            head = slice(None) if receiver.head is None else receiver.head
            activation[:, :, head] = activation[:, :, head] + (
                delta[:, :, None] if receiver.head is None else delta
            )
            return activation

        hooks.append((receiver.hook_name(), add))
    return hooks


_CHANNEL_ORDER = {"q": 0, "k": 1, "v": 2, "mlp": 3}


def path_edges(model, sites: Sequence[PatchSite], receivers: Sequence[Receiver]) -> tuple[EdgeLayout, Tensor]:
    """Path patching as masked edges: each sender is a fixed source with an edge into every
    receiver slot it writes into directly; row ``i`` of the masks turns on sender ``i``'s
    edges. A head named by several receivers receives the sender's change once.

    Returns ``(layout, masks [sender, edge])``."""
    arch = model.architecture
    slots: dict[tuple[int, str], set[int]] = {}  # (layer, channel) -> receiving slots
    for receiver in receivers:
        layer = arch.n_layers if receiver.kind == "logits" else receiver.layer
        if receiver.kind in ("q", "k", "v"):
            n_heads = arch.kv_heads if receiver.kind in ("k", "v") else arch.n_heads
            heads = range(n_heads) if receiver.head is None else [receiver.head]
        else:
            n_heads, heads = 1, [0]
        slots.setdefault((layer, receiver.kind), set()).update(heads)
    destinations, masks = [], []
    n_edges = 0
    for (layer, channel), receiving in sorted(
        slots.items(), key=lambda item: (item[0][0], _CHANNEL_ORDER.get(item[0][1], 4))
    ):
        per_head = channel in ("q", "k", "v")
        n_slots = (arch.kv_heads if channel in ("k", "v") else arch.n_heads) if per_head else 1
        reader = Receiver(channel, None if channel == "logits" else layer)
        edge_ids = torch.full((n_slots, len(sites)), -1, dtype=torch.long, device="cpu")
        for i, site in enumerate(sites):
            if reader.reads(site, model):
                for slot in sorted(receiving):
                    edge_ids[slot, i] = n_edges
                    masks.append(i)
                    n_edges += 1
        destinations.append(
            Destination(
                destination_hook(layer, channel, arch.n_layers),
                layer,
                per_head,
                edge_ids,
                final=channel == "logits",
            )
        )
    table = torch.zeros(len(sites), n_edges, device="cpu")  # bookkeeping: built on the CPU
    table[torch.tensor(masks, dtype=torch.long, device="cpu"), torch.arange(n_edges, device="cpu")] = 1.0
    return EdgeLayout(len(sites), len(sites), tuple(destinations)), table


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
    attention_mask: AttentionMask | None = None,
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
    layout, masks = path_edges(model, sites, receivers)
    masks = masks.to(model.device, model.dtype)
    # a row enters at the first block one of its sender's receivers changes
    entries = [
        min((r.entry_layer(model) for r in receivers if r.reads(site, model)), default=None) for site in sites
    ]
    sender_hooks = {site.hook_name for site in sites}
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
    values = base_value.expand(len(sites), *base_value.shape).clone()  # senders not run keep it

    # a row per sender whose change reaches a position the metric reads, from its first change
    changed = (deltas != 0).any(-1).cpu()  # [sender, batch, pos]
    first = torch.where(changed.any(-1), changed.int().argmax(-1), n_pos)  # [sender, batch]
    entry = torch.tensor([-1 if e is None else e for e in entries], dtype=torch.long, device="cpu")
    senders_run = ((first <= scorer.positions[None]).any(-1) & (entry >= 0)).nonzero()[:, 0]
    start = first[senders_run].amin(-1).clamp(max=int(scorer.positions.min()))

    def score(residual: Tensor, examples: Tensor) -> Tensor:
        return scorer.row_values(model.unembed(model.ln_final(residual[:, None])), examples)

    values[senders_run], stats = run_masked(
        model,
        layout,
        masks[senders_run.to(model.device)],
        base,
        RowSet(layer=entry[senders_run], start=start),
        read=scorer.positions,
        score=score,
        fixed=deltas,
        max_rows=max_batch_rows,
        max_memory=max_memory,
        progress=progress,
        description="path patching",
    )
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
            "rows_run": stats.rows,  # senders run, each over the whole batch
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
    attention_mask: AttentionMask | None = None,
) -> Float[Tensor, "cell batch"]:
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
            feeds = torch.tensor([receiver.reads(site, model) for receiver in receivers], device="cpu")
            hooks = _receiver_hooks(model, receivers, feeds, delta)
            if any(receiver.kind == "logits" for receiver in receivers):
                hooks.append((final_hook, lambda activation, hook, delta=delta: activation + delta))
            logits = model.run_with_hooks(base, attention_mask=mask, fwd_hooks=hooks)
            values.append(scorer.run_values(logits))
    return torch.stack(values)
