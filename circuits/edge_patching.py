"""Batched edge patching: evaluate many circuits (edge masks) in one forward pass.

A component's input is the sum of the outputs of the nodes before it. Patching edge
``e = (source -> target channel)`` makes that channel read the source's *ablated* output
instead of its output in the current run. For every destination channel:

    input = current_input + sum_e mask[row, e] * (ablated_output[source_e] - current_output[source_e])

so all edges patched gives the ablated (e.g. corrupted) run and none the clean run. Masks are
per batch row, so many circuits (for instance every point of a faithfulness curve) run as one
batched forward.

The forward passes run on the one masked executor of the patching core
(``mechinterp.patching.masked``, which path patching shares): each source's output is
recorded as it is computed (as ``ablated - current``) and each destination hook adds one
batched matrix product, so a forward costs a few matrix products per layer whatever the
number of edges. ``reference_patch_edges`` is the slow literal version (one edge at a time),
kept for tests.

Position-aware edge patching: with ``spans`` (``mechinterp.data.PositionSpans``), masks are
``[row, edge, span]`` and an edge carries the ablated source only at the positions of the
spans it is on (the destination reads, at position ``p``, the source's output at ``p``).
The same masked executor runs them; a mask equal across spans is the position-free mask.

The ablated outputs are (``ablation=``): ``"resample"``, each source's output on the corrupt
prompts (ACDC's and auto-circuit's default); ``"zero"``; ``"mean"``, its output on the clean
prompts averaged over the batch (per position).

Example:
    >>> graph = Graph.from_model(model)
    >>> masks = torch.ones(3, len(graph.edges)); masks[1] = 0
    >>> values = patch_edges(model, clean, corrupt, graph, masks, metric)   # [row, batch]
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.graph import Graph, Node
from mechinterp.data.pairs import PositionSpans
from mechinterp.dims import AttentionMask, Tokens
from mechinterp.metrics import PositionalMetric
from mechinterp.patching.base_run import BaseRun
from mechinterp.patching.masked import (
    Destination,
    EdgeLayout,
    Recorder,
    destination_hook,
    masked_prefix,
    run_masked,
)
from mechinterp.patching.rows import RowSet

Ablation = Literal["resample", "zero", "mean"]
ABLATIONS: tuple[str, ...] = ("resample", "zero", "mean")


def destination_groups(graph: Graph) -> list[Destination]:
    """The graph's edges as dense ``[slot, source]`` tables (``graph.channel_tables``), one
    per destination hook, in forward order."""
    return [
        Destination(
            destination_hook(layer, channel, graph.n_layers),
            graph.n_layers if layer is None else layer,
            channel in ("q", "k", "v"),
            edge_ids,
            final=layer is None,
        )
        for layer, channel, edge_ids in graph.channel_tables
    ]


def edge_layout(model, graph: Graph, start_layer: int = 0) -> EdgeLayout:
    """The graph as the masked executor sees it: sources before ``start_layer`` fixed, the
    others recorded live as rows run."""
    index = {node: i for i, node in enumerate(graph.source_nodes)}
    n_fixed = index[Node("head", start_layer, 0)] if start_layer > 0 else 0
    recorders = []
    if start_layer == 0:
        recorders.append(Recorder("hook_embed", 0, index[Node("input")], "embed"))
        if model.pos_embed is not None:
            recorders.append(Recorder("hook_pos_embed", 0, index[Node("input")], "pos_embed"))
    for layer in range(start_layer, graph.n_layers):
        recorders.append(
            Recorder(f"blocks.{layer}.attn.hook_result", layer, index[Node("head", layer, 0)], "heads")
        )
        if Node("mlp", layer) in index:
            recorders.append(
                Recorder(f"blocks.{layer}.hook_mlp_out", layer, index[Node("mlp", layer)], "output")
            )
    return EdgeLayout(len(graph.source_nodes), n_fixed, tuple(destination_groups(graph)), tuple(recorders))


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
    names = source_hook_names(graph)
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


def first_difference(clean: Tensor, corrupt: Tensor, ablation: Ablation) -> int:
    """The first position where the clean and ablated runs can differ: where any example's
    clean and corrupt tokens first differ (resample ablation), else 0."""
    if ablation != "resample":
        return 0
    differs = (clean != corrupt).any(0)
    return int(differs.int().argmax()) if bool(differs.any()) else clean.shape[1]


@torch.no_grad()
def patch_edges(
    model,
    clean: Tokens,
    corrupt: Tokens,
    graph: Graph,
    masks: Float[Tensor, "row edge *span"],
    metric: PositionalMetric,
    *,
    ablation: Ablation = "resample",
    attention_mask: AttentionMask | None = None,
    start_layer: int = 0,
    max_memory: int | None = None,
    progress: bool = False,
    spans: PositionSpans | None = None,
) -> Float[Tensor, "row batch"]:
    """Metric values ``[row, batch]`` of the clean run with each row's masked edges patched.

    ``masks``: ``[row, edge]`` weights in ``[0, 1]`` (1 = the edge carries the ablated
    source). Every row runs the whole clean batch; rows run on the patching row runner
    (``mechinterp.patching.rows``) in as few forwards as fit ``max_memory`` bytes (default:
    half the free device memory), computing positions from the first one where clean and
    corrupt tokens differ (before it every patch is zero). When all rows agree on the edges
    into blocks before ``start_layer``, those blocks run once for all rows (ACDC's case).
    With ``spans``, ``masks`` is ``[row, edge, span]``: each edge is patched at the positions
    of the spans where its mask is on (position-aware circuits).
    """
    expected = (len(graph.edges),) if spans is None else (len(graph.edges), spans.n_spans)
    if masks.ndim != 1 + len(expected) or tuple(masks.shape[1:]) != expected:
        shape = ", ".join(str(n) for n in expected)
        raise ValueError(f"masks must be [row, {shape}], got {tuple(masks.shape)}")
    if spans is not None and tuple(spans.ids.shape) != tuple(clean.shape):
        raise ValueError(
            f"spans label {tuple(spans.ids.shape)} positions but the tokens are {tuple(clean.shape)}"
        )
    check_graph_fits(model, graph)
    if not 0 <= start_layer < graph.n_layers:
        raise ValueError(f"start_layer must be in 0..{graph.n_layers - 1}, got {start_layer}")
    clean, corrupt = clean.to(model.device), corrupt.to(model.device)
    mask = torch.ones_like(clean) if attention_mask is None else attention_mask.to(model.device)
    masks = masks.to(model.device, model.dtype)
    ablated = ablated_outputs(model, graph, clean, corrupt, ablation, mask)
    positions = metric.positions.to(model.device)
    # before the first differing token every patch is zero: those positions' keys and
    # values come from the clean run, and only later positions run (and are patched) per row
    start = min(first_difference(clean, corrupt, ablation), int(positions.min()))
    base = BaseRun.prefix(model, clean, mask, start)
    layout = edge_layout(model, graph, start_layer)
    span_ids = None if spans is None else spans.ids.to(model.device)
    fixed, entering = None, None
    if start_layer > 0:  # blocks before start_layer run once, with the first row's mask
        before = layout.edges_before(start_layer).to(model.device)
        if not bool((masks[:, before] == masks[:1, before]).all()):
            raise ValueError(f"start_layer={start_layer}: rows differ on edges into blocks before it")
        residual, fixed = masked_prefix(
            model,
            edge_layout(model, graph),
            masks[0],
            base,
            ablated=ablated,
            start=start,
            stop=start_layer,
            n_before=layout.n_fixed,
            spans=span_ids,
        )
        entering = {start_layer: residual}

    def score(residual: Tensor, examples: Tensor) -> Tensor:
        return metric.score(model.unembed(model.ln_final(residual[:, None]))[:, 0].float(), examples)

    values, _ = run_masked(
        model,
        layout,
        masks,
        base,
        RowSet(
            layer=torch.full((len(masks),), start_layer, dtype=torch.long, device="cpu"),
            start=torch.full((len(masks),), start, dtype=torch.long, device="cpu"),
        ),
        read=positions,
        score=score,
        ablated=ablated[layout.n_fixed :],
        fixed=fixed,
        entering=entering,
        max_memory=max_memory,
        progress=progress,
        description="edge patching",
        spans=span_ids,
    )
    return values.to(model.device)


@torch.no_grad()
def reference_patch_edges(
    model,
    clean: Tokens,
    corrupt: Tokens,
    graph: Graph,
    mask: Float[Tensor, " edge *span"],
    metric: PositionalMetric,
    *,
    ablation: Ablation = "resample",
    spans: PositionSpans | None = None,
) -> Float[Tensor, " batch"]:
    """Slow literal reference for one mask ``[edge]`` (``[edge, span]`` with ``spans``): hooks
    that apply each patched edge separately at its destination. Values ``[batch]``."""
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
            if not bool(mask[index].any()) or target != hook.name:
                continue
            weight = mask[index] if spans is None else mask[index][spans.ids][..., None]  # [batch, pos, 1]
            change = weight * (ablated[edge.source] - current[edge.source])
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
