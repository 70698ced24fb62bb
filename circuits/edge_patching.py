"""Batched edge patching: evaluate many circuits (edge masks) in one forward pass.

A component's input is the sum of the outputs of the nodes before it. Patching edge
``e = (source -> target channel)`` makes that channel read the source's *ablated* output
instead of its output in the current run. For every destination channel:

    input = current_input + sum_e mask[row, e] * (ablated_output[source_e] - current_output[source_e])

so all edges patched gives the ablated (e.g. corrupted) run and none the clean run. Masks are
per batch row, so many circuits (for instance every point of a faithfulness curve) run as one
batched forward.

How it is fast: source outputs are written into one buffer ``[row, source, batch*pos*d_model]``
as they are computed (as ``ablated - current``), and each destination hook (the query inputs of
all heads of a layer, its key inputs, ...) adds one batched matrix product
``mask[row, slot, source] @ buffer[row, source, :]``, so a forward costs a few matrix products
per layer whatever the number of edges. ``reference_patch_edges`` is the slow literal version
(one edge at a time), kept for tests.

The ablated outputs are (``ablation=``): ``"resample"``, each source's output on the corrupt
prompts (ACDC's and auto-circuit's default); ``"zero"``; ``"mean"``, its output on the clean
prompts averaged over the batch (per position).

Example:
    >>> graph = Graph.from_model(model)
    >>> masks = torch.ones(3, len(graph.edges)); masks[1] = 0
    >>> values = patch_edges(model, clean, corrupt, graph, masks, metric)   # [row, batch]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.graph import Channel, Graph, Node
from mechinterp.metrics import PositionalMetric
from mechinterp.models.prefix import KeyValuePrefix
from mechinterp.patching.memory import bytes_per_row
from mechinterp.patching.rows import RowSet, run_rows

Ablation = Literal["resample", "zero", "mean"]
ABLATIONS: tuple[str, ...] = ("resample", "zero", "mean")


def destination_hook(layer: int | None, channel: Channel, n_layers: int) -> str:
    """The hook whose value is the input of one destination channel."""
    if channel == "logits":
        return f"blocks.{n_layers - 1}.hook_resid_post"
    return f"blocks.{layer}.hook_mlp_in" if channel == "mlp" else f"blocks.{layer}.hook_{channel}_input"


@dataclass(frozen=True)
class DestinationGroup:
    """All edges read at one hook: ``edge_ids[slot, source]`` is the edge from that source
    into that slot (a head for q/k/v inputs, the only slot otherwise), or -1 for no edge."""

    hook: str
    layer: int  # the block the hook is in
    per_head: bool
    edge_ids: Tensor  # [slot, source] (long)

    @property
    def n_sources(self) -> int:
        return self.edge_ids.shape[1]


def destination_groups(graph: Graph) -> list[DestinationGroup]:
    """The graph's edges as dense ``[slot, source]`` tables (``graph.channel_tables``), one
    per destination hook, in forward order."""
    return [
        DestinationGroup(
            destination_hook(layer, channel, graph.n_layers),
            graph.n_layers - 1 if layer is None else layer,
            channel in ("q", "k", "v"),
            edge_ids,
        )
        for layer, channel, edge_ids in graph.channel_tables
    ]


def source_outputs(model, cache, graph: Graph) -> Float[Tensor, "source batch pos d_model"]:
    """Each source node's output in a cached run, stacked in ``graph.source_nodes`` order."""
    outputs = []
    heads: dict[int, Tensor] = {}  # layer -> [batch, pos, head, d_model], from the model's own math
    for node in graph.source_nodes:
        if node.kind == "input":
            pos = cache["hook_pos_embed"] if model.pos_embed is not None else 0
            outputs.append(cache["hook_embed"] + pos)
        elif node.kind == "mlp":
            outputs.append(cache[f"blocks.{node.layer}.hook_mlp_out"])
        else:
            if node.layer not in heads:
                z = cache[f"blocks.{node.layer}.attn.hook_z"]
                heads[node.layer] = model.blocks[node.layer].attn.head_outputs(z)
            outputs.append(heads[node.layer][:, :, node.head])
    return torch.stack(outputs)


def source_hook_names(graph: Graph) -> set[str]:
    """The hooks ``source_outputs`` reads."""
    names = {
        "hook_embed",
        "hook_pos_embed",
        *(f"blocks.{layer}.attn.hook_z" for layer in range(graph.n_layers)),
    }
    return names | {f"blocks.{n.layer}.hook_mlp_out" for n in graph.source_nodes if n.kind == "mlp"}


def run_source_outputs(
    model, graph: Graph, tokens: Tensor, attention_mask: Tensor | None = None
) -> Float[Tensor, "source batch pos d_model"]:
    """Each source node's output on ``tokens``, from one forward pass caching only what it needs."""
    names = {
        "hook_embed",
        "hook_pos_embed",
        *(f"blocks.{layer}.attn.hook_z" for layer in range(graph.n_layers)),
    }
    names |= {f"blocks.{n.layer}.hook_mlp_out" for n in graph.source_nodes if n.kind == "mlp"}
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, attention_mask=attention_mask, names_filter=lambda n: n in names
        )
        return source_outputs(model, cache, graph)


def ablated_outputs(
    model, graph: Graph, clean: Tensor, corrupt: Tensor, ablation: Ablation, attention_mask: Tensor | None
) -> Float[Tensor, "source batch pos d_model"]:
    """The values patched edges carry: corrupt-run outputs, zeros or clean batch means."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if ablation == "zero":
        shape = (len(graph.source_nodes), *clean.shape, model.architecture.d_model)
        return torch.zeros(shape, device=model.device, dtype=model.dtype)
    if ablation == "mean":
        outputs = run_source_outputs(model, graph, clean, attention_mask)
        return outputs.mean(dim=1, keepdim=True).expand_as(outputs)
    return run_source_outputs(model, graph, corrupt, attention_mask)


def check_graph_fits(model, graph: Graph) -> None:
    arch = model.architecture
    if (graph.n_layers, graph.n_heads) != (arch.n_layers, arch.n_heads):
        raise ValueError(
            f"graph of {graph.model_name!r} ({graph.n_layers} layers, {graph.n_heads} heads) does not fit "
            f"{arch.model_name!r} ({arch.n_layers} layers, {arch.n_heads} heads)"
        )


class _MaskedRun:
    """Hooks for one batched forward of ``rows`` circuits over a batch of ``batch`` examples.

    The query, key and value inputs of one layer read the same sources, so their three
    patches come from one matrix product (at the query hook, which runs first)."""

    def __init__(self, graph: Graph, groups: list[DestinationGroup], masks: Tensor, ablated: Tensor):
        self.rows, self.batch = masks.shape[0], ablated.shape[1]
        self.ablated = ablated.flatten(1)  # [source, batch*pos*d]
        self.buffer = ablated.new_empty(self.rows, ablated.shape[0], self.ablated.shape[1])
        padded = torch.cat([masks, masks.new_zeros(self.rows, 1)], dim=1)  # column -1 = "no edge"
        self.source_index = {node: i for i, node in enumerate(graph.source_nodes)}
        self.groups = groups
        # the per-head groups of a layer (q, k, v: same sources) share one product at the
        # first of them, which fires first; every other group has its own
        parts: dict[str, list[Tensor]] = {}  # lead hook -> masks [row, slot, source] per group
        self.fused: dict[str, list[tuple[str, int, int]]] = {}  # lead hook -> (hook, first slot, slots)
        leads: dict[object, str] = {}
        for group in groups:
            lead = leads.setdefault((group.layer, "heads") if group.per_head else group.hook, group.hook)
            members = self.fused.setdefault(lead, [])
            offset = sum(slots for _, _, slots in members)
            members.append((group.hook, offset, group.edge_ids.shape[0]))
            parts.setdefault(lead, []).append(padded[:, group.edge_ids])
        self.masks = {lead: torch.cat(masks, 1) for lead, masks in parts.items()}
        self.n_sources = {g.hook: g.n_sources for g in groups}
        self.pending: dict[str, Tensor] = {}

    def hooks(self, model, graph: Graph) -> list:
        hooks = [("hook_embed", self._record_input)]
        if model.pos_embed is not None:
            hooks.append(("hook_pos_embed", self._record_input))
        for layer in range(graph.n_layers):
            first_head = self.source_index[Node("head", layer, 0)]
            hooks.append((f"blocks.{layer}.attn.hook_result", self._record_heads(first_head)))
            if Node("mlp", layer) in self.source_index:
                hooks.append(
                    (f"blocks.{layer}.hook_mlp_out", self._record(self.source_index[Node("mlp", layer)]))
                )
        hooks += [(g.hook, self._patch) for g in self.groups]
        return hooks

    def _kept(self, value: Tensor) -> Tensor:
        """``[row*batch, pos, ...]`` -> ``[row, batch, pos, ...]`` (a view)."""
        return value.view(self.rows, self.batch, *value.shape[1:])

    def _store(self, first: int, value: Tensor) -> None:
        """``buffer[:, first:first+n] = ablated - value`` for ``value`` ``[row, n, batch*pos*d]``."""
        n = value.shape[1]
        torch.sub(
            self.ablated[first : first + n],
            value.to(self.buffer.device),
            out=self.buffer[:, first : first + n],
        )

    def _record_input(self, value: Tensor, hook) -> Tensor:
        rows_view = self._kept(value).reshape(self.rows, 1, -1)
        if hook.name == "hook_embed":
            self._store(0, rows_view)
        else:  # learned positions: the input node's output is embed + pos_embed
            self.buffer[:, 0] -= rows_view[:, 0]
        return value

    def _record(self, index: int):
        def record(value: Tensor, hook) -> Tensor:
            self._store(index, self._kept(value).reshape(self.rows, 1, -1))
            return value

        return record

    def _record_heads(self, first: int):
        def record(value: Tensor, hook) -> Tensor:  # [row*batch, pos, head, d_model]
            heads = self._kept(value).permute(0, 3, 1, 2, 4).reshape(self.rows, value.shape[2], -1)
            self._store(first, heads)
            return value

        return record

    def _patch(self, value: Tensor, hook) -> Tensor:
        """Add the patch in place (under ``no_grad``; the hooked tensors are fresh copies)."""
        if hook.name in self.masks:  # compute this hook's patch and its fused siblings'
            delta = torch.bmm(self.masks[hook.name], self.buffer[:, : self.n_sources[hook.name]])
            for name, first, slots in self.fused[hook.name]:
                self.pending[name] = delta[:, first : first + slots]  # [row, slot, batch*pos*d]
        delta = self.pending.pop(hook.name).to(value.device)  # blocks may sit on other devices
        kept = self._kept(value)
        if value.ndim == 3:
            kept += delta.view(kept.shape)
        else:
            shape = (self.rows, delta.shape[1], self.batch, kept.shape[2], value.shape[3])
            kept += delta.view(shape).permute(0, 2, 3, 1, 4)
        return value


def first_difference(clean: Tensor, corrupt: Tensor, ablation: Ablation) -> int:
    """The first position where the clean and ablated runs can differ: where any example's
    clean and corrupt tokens first differ (resample ablation), else 0."""
    if ablation != "resample":
        return 0
    differs = (clean != corrupt).any(0)
    return int(differs.int().argmax()) if bool(differs.any()) else clean.shape[1]


def _shared_prefix(
    graph, groups, masks, inputs, past, mask, ablated, start_layer: int, model
) -> tuple[Tensor, Tensor]:
    """Run blocks before ``start_layer`` once for all rows (their masks there must agree):
    the residual stream entering ``start_layer`` and the buffer of the sources before it."""
    before = torch.cat([g.edge_ids[g.edge_ids >= 0] for g in groups if g.layer < start_layer])
    if not bool((masks[:, before] == masks[:1, before]).all()):
        raise ValueError(f"start_layer={start_layer}: rows differ on edges into blocks before it")
    run = _MaskedRun(graph, groups, masks[:1], ablated)
    with model.hooks(fwd_hooks=run.hooks(model, graph)):
        resid = model(inputs, past=past, attention_mask=mask, stop_at_layer=start_layer)
    return resid, run.buffer[0, : graph.source_nodes.index(Node("head", start_layer, 0))]


def _clean_prefix(model, clean: Tensor, mask: Tensor | None, length: int) -> KeyValuePrefix | None:
    """Keys and values of the first ``length`` clean positions, which no patch changes."""
    if length == 0:
        return None
    _, cache = model.run_with_cache(
        clean[:, :length],
        attention_mask=None if mask is None else mask[:, :length],
        names_filter=KeyValuePrefix.hook_filter(model),
        return_type=None,
    )
    return KeyValuePrefix.from_cache(cache, model, length)


@torch.no_grad()
def patch_edges(
    model,
    clean: Tensor,
    corrupt: Tensor,
    graph: Graph,
    masks: Tensor,
    metric: PositionalMetric,
    *,
    ablation: Ablation = "resample",
    attention_mask: Tensor | None = None,
    start_layer: int = 0,
    max_memory: int | None = None,
    progress: bool = False,
) -> Float[Tensor, "row batch"]:
    """Metric values ``[row, batch]`` of the clean run with each row's masked edges patched.

    ``masks``: ``[row, edge]`` weights in ``[0, 1]`` (1 = the edge carries the ablated
    source). Every row runs the whole clean batch; rows run on the patching row runner
    (``mechinterp.patching.rows``) in as few forwards as fit ``max_memory`` bytes (default:
    half the free device memory), computing positions from the first one where clean and
    corrupt tokens differ (before it every patch is zero). When all rows agree on the edges
    into blocks before ``start_layer``, those blocks run once for all rows (ACDC's case).
    """
    if masks.ndim != 2 or masks.shape[1] != len(graph.edges):
        raise ValueError(f"masks must be [row, {len(graph.edges)}], got {tuple(masks.shape)}")
    check_graph_fits(model, graph)
    if not 0 <= start_layer < graph.n_layers:
        raise ValueError(f"start_layer must be in 0..{graph.n_layers - 1}, got {start_layer}")
    clean, corrupt = clean.to(model.device), corrupt.to(model.device)
    mask = None if attention_mask is None else attention_mask.to(model.device)
    masks = masks.to(model.device, model.dtype)
    ablated = ablated_outputs(model, graph, clean, corrupt, ablation, mask)
    groups = destination_groups(graph)
    batch, n_pos, positions = clean.shape[0], clean.shape[1], metric.positions.to(model.device)
    # positions before the first differing token are the same in every row: their keys and
    # values are computed once, and only later positions run (and are patched) per row
    start = min(first_difference(clean, corrupt, ablation), int(positions.min()))
    past, inputs, ablated = _clean_prefix(model, clean, mask, start), clean[:, start:], ablated[:, :, start:]
    values = torch.empty(len(masks), batch, dtype=torch.float32, device=model.device)
    with model.per_head_hooks(results=True, split_inputs=True):
        prefix = None
        if start_layer > 0:
            inputs, prefix = _shared_prefix(
                graph, groups, masks, inputs, past, mask, ablated, start_layer, model
            )

        def run_chunk(chunk: Tensor, _start: int) -> None:
            run = _MaskedRun(graph, groups, masks[chunk.to(model.device)], ablated)
            rows = len(chunk)
            examples = torch.arange(batch, device=model.device).repeat(rows)
            if prefix is not None:
                run.buffer[:, : prefix.shape[0]] = prefix
            with model.hooks(fwd_hooks=run.hooks(model, graph)):
                logits = model(
                    inputs.repeat(rows, *([1] * (inputs.ndim - 1))),
                    start_at_layer=start_layer,
                    past=None if past is None else past.select(examples),
                    attention_mask=None if mask is None else mask.repeat(rows, 1),
                    logit_positions=(positions - start).repeat(rows)[:, None],
                )
            values[chunk.to(model.device)] = metric.score(logits[:, 0].float(), examples).reshape(rows, batch)

        buffer_row = ablated.numel() * ablated.element_size()
        run_rows(
            RowSet(
                layer=torch.full((len(masks),), start_layer, dtype=torch.long, device="cpu"),
                start=torch.full((len(masks),), start, dtype=torch.long, device="cpu"),
            ),
            run_chunk,
            row_bytes=lambda computed: buffer_row + 2 * batch * bytes_per_row(model, computed, 1, n_pos),
            n_positions=n_pos,
            device=model.device,
            max_memory=max_memory,
            progress=progress,
            description="edge patching",
        )
    return values


@torch.no_grad()
def reference_patch_edges(
    model,
    clean: Tensor,
    corrupt: Tensor,
    graph: Graph,
    mask: Tensor,
    metric: PositionalMetric,
    *,
    ablation: Ablation = "resample",
) -> Float[Tensor, " batch"]:
    """Slow literal reference for one mask ``[edge]``: hooks that apply each patched edge
    separately at its destination. Values ``[batch]``."""
    clean, corrupt = clean.to(model.device), corrupt.to(model.device)
    ablated = dict(
        zip(graph.source_nodes, ablated_outputs(model, graph, clean, corrupt, ablation, None), strict=True)
    )
    current: dict[Node, Tensor] = {}

    def record(value: Tensor, hook) -> Tensor:
        if hook.name in ("hook_embed", "hook_pos_embed"):
            current[Node("input")] = current.get(Node("input"), 0) + value
        elif hook.name.endswith("hook_mlp_out"):
            current[Node("mlp", int(hook.name.split(".")[1]))] = value
        else:
            layer = int(hook.name.split(".")[1])
            for head in range(value.shape[2]):
                current[Node("head", layer, head)] = value[:, :, head]
        return value

    def patch(value: Tensor, hook) -> Tensor:
        for index, edge in enumerate(graph.edges):
            target = destination_hook(edge.target.layer, edge.channel, graph.n_layers)
            if mask[index] == 0 or target != hook.name:
                continue
            change = mask[index] * (ablated[edge.source] - current[edge.source])
            if edge.channel in ("q", "k", "v"):
                value[:, :, edge.target.head] = value[:, :, edge.target.head] + change
            else:
                value = value + change
        return value

    record_names = ["hook_embed", "hook_pos_embed"] if model.pos_embed is not None else ["hook_embed"]
    for layer in range(graph.n_layers):
        record_names.append(f"blocks.{layer}.attn.hook_result")
        if Node("mlp", layer) in graph.source_nodes:
            record_names.append(f"blocks.{layer}.hook_mlp_out")
    patch_names = {destination_hook(e.target.layer, e.channel, graph.n_layers) for e in graph.edges}
    with model.per_head_hooks(results=True, split_inputs=True):
        hooks = [(name, record) for name in record_names] + [(name, patch) for name in sorted(patch_names)]
        logits = model.run_with_hooks(clean, fwd_hooks=hooks)
    rows = torch.arange(clean.shape[0], device=model.device)
    return metric.score(logits[rows, metric.positions.to(model.device)].float(), rows)
