"""Batched edge patching: evaluate many circuits (edge masks) in one forward pass.

A component's input is the sum of the outputs of the nodes before it. Patching edge
``e = (source -> target channel)`` makes that channel read the source's *corrupted* output
instead of its output in the current run. For every destination channel:

    input = current_input + sum_e mask[row, e] * (corrupt_output[source_e] - current_output[source_e])

so all edges patched gives the corrupted run and none the clean run. Masks are per batch row,
so many circuits (for instance every point of a faithfulness curve) run as one batched
forward. ``reference_patch_edges`` is the slow literal version (one edge at a time).

Example:
    >>> graph = Graph.from_model(model)
    >>> masks = torch.ones(3, len(graph.edges)); masks[1] = 0
    >>> values = patch_edges(model, clean, corrupt, graph, masks, metric)   # [row, batch]
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.graph import Graph, Node
from mechinterp.metrics import PositionalMetric


def _source_outputs(model, cache) -> dict[Node, Tensor]:
    """Each source node's output ``[batch, pos, d_model]`` in a cached run."""
    outputs = {
        Node("input"): cache["hook_embed"] + (cache["hook_pos_embed"] if model.pos_embed is not None else 0)
    }
    for layer, block in enumerate(model.blocks):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        per_head = torch.einsum("bphd,hdm->bphm", z, block.attn.W_O)
        for head in range(model.architecture.n_heads):
            outputs[Node("head", layer, head)] = per_head[:, :, head]
        outputs[Node("mlp", layer)] = cache[f"blocks.{layer}.hook_mlp_out"]
    return outputs


def _destination_hook(layer: int | None, channel: str, model) -> str:
    if channel == "logits":
        return f"blocks.{model.architecture.n_layers - 1}.hook_resid_post"
    return f"blocks.{layer}.hook_mlp_in" if channel == "mlp" else f"blocks.{layer}.hook_{channel}_input"


class _EdgeRun:
    """Hooks for one patched forward: record current source outputs, adjust destinations."""

    def __init__(self, model, graph: Graph, masks: Tensor, corrupt: dict[Node, Tensor], batch: int):
        self.model, self.graph, self.corrupt = model, graph, corrupt
        self.masks = masks  # [rows, edges]
        self.batch = batch
        self.current: dict[Node, Tensor] = {}

    def _row_mask(self, edge_ids: list[int]) -> Tensor:
        """``[rows * batch, n]``: each row's mask repeated for its examples."""
        return self.masks[:, edge_ids].repeat_interleave(self.batch, dim=0)

    def hooks(self) -> list:
        model = self.model
        hooks = [("hook_embed", self._record_input)]
        if model.pos_embed is not None:
            hooks.append(("hook_pos_embed", self._record_input))
        for layer in range(model.architecture.n_layers):
            hooks.append((f"blocks.{layer}.attn.hook_result", self._record_heads(layer)))
            hooks.append((f"blocks.{layer}.hook_mlp_out", self._record(Node("mlp", layer))))
            for channel in "qkv":
                hooks.append((_destination_hook(layer, channel, model), self._patch_heads(layer, channel)))
            hooks.append(
                (_destination_hook(layer, "mlp", model), self._patch_single(Node("mlp", layer), "mlp"))
            )
        hooks.append((_destination_hook(None, "logits", model), self._patch_single(Node("logits"), "logits")))
        return hooks

    def _record_input(self, value: Tensor, hook) -> Tensor:
        node = Node("input")
        self.current[node] = value if node not in self.current else self.current[node] + value
        return value

    def _record(self, node: Node):
        def record(value: Tensor, hook) -> Tensor:
            self.current[node] = value
            return value

        return record

    def _record_heads(self, layer: int):
        def record(value: Tensor, hook) -> Tensor:  # [rows*batch, pos, head, d_model]
            for head in range(value.shape[2]):
                self.current[Node("head", layer, head)] = value[:, :, head]
            return value

        return record

    def _delta(self, edge_ids: list[int]) -> Tensor:
        """``sum_e mask_e * (corrupt_e - current_e)`` for one destination, ``[rows*batch, pos, d]``."""
        sources = [self.graph.edges[i].source for i in edge_ids]
        weights = self._row_mask(edge_ids)  # [rows*batch, n]
        rows = weights.shape[0] // self.batch
        total = 0
        for j, source in enumerate(sources):
            corrupt = self.corrupt[source].repeat(rows, 1, 1)
            total = total + weights[:, j, None, None] * (corrupt - self.current[source])
        return total

    def _patch_heads(self, layer: int, channel: str):
        def patch(value: Tensor, hook) -> Tensor:  # [rows*batch, pos, heads, d_model]
            for head in range(value.shape[2]):
                edge_ids = self.graph.edges_into(Node("head", layer, head), channel)
                value[:, :, head] = value[:, :, head] + self._delta(edge_ids)
            return value

        return patch

    def _patch_single(self, node: Node, channel: str):
        def patch(value: Tensor, hook) -> Tensor:
            return value + self._delta(self.graph.edges_into(node, channel))

        return patch


@torch.no_grad()
def patch_edges(
    model,
    clean: Tensor,
    corrupt: Tensor,
    graph: Graph,
    masks: Tensor,
    metric: PositionalMetric,
) -> Tensor:
    """Metric values ``[row, batch]`` of the clean run with each row's masked edges patched.

    ``masks``: ``[row, edge]`` weights in ``[0, 1]`` (1 = the edge carries the corrupted
    source). Every row runs the whole clean batch, all rows in one forward pass.
    """
    if masks.ndim != 2 or masks.shape[1] != len(graph.edges):
        raise ValueError(f"masks must be [row, {len(graph.edges)}], got {tuple(masks.shape)}")
    if graph.n_layers != model.architecture.n_layers or graph.n_heads != model.architecture.n_heads:
        raise ValueError(
            f"graph of {graph.model_name!r} ({graph.n_layers} layers, {graph.n_heads} heads) does not fit "
            f"{model.architecture.model_name!r} ({model.architecture.n_layers} layers, {model.architecture.n_heads} heads)"
        )
    clean, corrupt = clean.to(model.device), corrupt.to(model.device)
    batch = clean.shape[0]
    _, corrupt_cache = model.run_with_cache(corrupt)
    corrupt_outputs = _source_outputs(model, corrupt_cache)
    run = _EdgeRun(model, graph, masks.to(model.device, model.dtype), corrupt_outputs, batch)
    rows = masks.shape[0]
    previous = (model.blocks[0].attn.use_attn_result, model.blocks[0].use_split_qkv_input)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    try:
        with model.hooks(fwd_hooks=run.hooks()):
            logits = model(clean.repeat(rows, 1))
    finally:
        model.set_use_attn_result(previous[0])
        model.set_use_split_qkv_input(previous[1])
    examples = torch.arange(batch).repeat(rows)
    positions = metric.positions.to(model.device)[examples.to(model.device)]
    picked = logits[torch.arange(rows * batch, device=model.device), positions]
    return metric.score(picked, examples).reshape(rows, batch)


@torch.no_grad()
def reference_patch_edges(
    model, clean: Tensor, corrupt: Tensor, graph: Graph, mask: Tensor, metric: PositionalMetric
) -> Tensor:
    """Slow literal reference for one mask ``[edge]``: hooks that apply each patched edge
    separately at its destination. Values ``[batch]``."""
    clean, corrupt = clean.to(model.device), corrupt.to(model.device)
    _, corrupt_cache = model.run_with_cache(corrupt)
    corrupt_outputs = _source_outputs(model, corrupt_cache)
    current: dict[Node, Tensor] = {}
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)

    def record(node_fn):
        def hook(value, hook):
            for node, part in node_fn(value):
                current[node] = current.get(node, 0) + part if node.kind == "input" else part
            return value

        return hook

    def patch(target_of):
        def hook(value, hook):
            for index, edge in enumerate(graph.edges):
                if mask[index] == 0:
                    continue
                slot = target_of(edge)
                if slot is None:
                    continue
                change = mask[index] * (corrupt_outputs[edge.source] - current[edge.source])
                if slot == "all":
                    value = value + change
                else:
                    value[:, :, slot] = value[:, :, slot] + change
            return value

        return hook

    hooks = [("hook_embed", record(lambda v: [(Node("input"), v)]))]
    if model.pos_embed is not None:
        hooks.append(("hook_pos_embed", record(lambda v: [(Node("input"), v)])))
    n_layers = model.architecture.n_layers
    for layer in range(n_layers):
        hooks.append(
            (
                f"blocks.{layer}.attn.hook_result",
                record(
                    lambda v, layer=layer: [(Node("head", layer, h), v[:, :, h]) for h in range(v.shape[2])]
                ),
            )
        )
        hooks.append(
            (f"blocks.{layer}.hook_mlp_out", record(lambda v, layer=layer: [(Node("mlp", layer), v)]))
        )
        for channel in "qkv":
            hooks.append(
                (
                    _destination_hook(layer, channel, model),
                    patch(
                        lambda e, layer=layer, channel=channel: (
                            e.target.head
                            if e.target.kind == "head" and e.target.layer == layer and e.channel == channel
                            else None
                        )
                    ),
                )
            )
        hooks.append(
            (
                _destination_hook(layer, "mlp", model),
                patch(lambda e, layer=layer: "all" if e.target == Node("mlp", layer) else None),
            )
        )
    hooks.append(
        (_destination_hook(None, "logits", model), patch(lambda e: "all" if e.channel == "logits" else None))
    )
    try:
        logits = model.run_with_hooks(clean, fwd_hooks=hooks)
    finally:
        model.set_use_attn_result(False)
        model.set_use_split_qkv_input(False)
    rows = torch.arange(clean.shape[0], device=model.device)
    return metric.score(logits[rows, metric.positions.to(model.device)], rows)
