"""Edge attribution patching: a gradient score for every edge at once.

EAP (Syed et al. 2023) estimates the effect of patching edge ``source -> target channel`` as

    (corrupt_output[source] - clean_output[source]) . dM/d(input of the target channel)

summed over batch and positions, from a clean forward and backward pass and the corrupted
source outputs. Where the metric is linear in the target's input this is exact edge patching.

RelP at edge level (``relp_scores``; Rezaei Jafari et al. 2025) is the same product with the
gradient replaced by LRP relevance coefficients (``mechinterp.patching.relevance``): norm
scales held constant, ``act(x)/x`` through the MLP activation, half the relevance to each
factor of a gated MLP (``DEFAULT_RULES``). Same cost as EAP. With the AH rule too
(``rules=RULES``) query and key edges score 0 (their heads' patterns are constants).

EAP-IG (Hanna et al. 2024, "inputs" variant) replaces the clean gradient by the gradient
averaged along the straight line from the corrupt to the clean input embeddings (integrated
gradients, Sundararajan et al. 2017), which follows the metric's curvature between the two
runs. The ``steps`` points of the line run as rows of one batched forward and backward; they
sit at the midpoints ``(k + 1/2) / steps`` (midpoint rule).

Position-aware scores (``spans=``, a ``mechinterp.data.PositionSpans``): the same products
restricted to the positions of each span, ``[edge, span]``; they sum over spans to the
position-free score (the methods are linear in the output difference).

Every score is one dot product of a source's output difference with a destination's
gradient, so all of them are a few matrix products ``[slot, batch*pos*d] @ [batch*pos*d,
source]``, one per destination hook.

Example:
    >>> scores = eap_scores(model, clean, corrupt, Graph.from_model(model), metric)   # [edge]
    >>> scores = eap_ig_scores(model, clean, corrupt, graph, metric, steps=5)
    >>> scores = relp_scores(model, clean, corrupt, graph, metric)
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.edge_patching import (
    check_graph_fits,
    destination_groups,
    first_difference,
    run_source_outputs,
    source_hook_names,
    source_outputs,
)
from circuits.graph import Graph, Node
from mechinterp.data.pairs import PositionSpans
from mechinterp.dims import AttentionMask, Tokens
from mechinterp.metrics import PositionalMetric
from mechinterp.patching.relevance import DEFAULT_RULES, relevance_hooks


def _destination_gradients(
    model,
    graph: Graph,
    clean: Tensor,
    metric: PositionalMetric,
    mask: Tensor | None,
    embed_line: Tensor | None,
    record: dict[str, Tensor] | None = None,
    rules: Collection[str] = (),
) -> dict[str, Tensor]:
    """Gradients of the summed metric with respect to every destination hook's input.

    With ``embed_line`` (``[steps, batch, pos, d_model]`` token embeddings) the rows are the
    points of that line and gradients are averaged over them. ``record`` receives the
    (detached) activations ``source_outputs`` needs, so the run doubles as the clean run.
    With ``rules`` the backward pass propagates LRP coefficients (RelP with those rules);
    inputs they do not reach (queries and keys, under the AH rule) get zeros."""
    steps = 1 if embed_line is None else embed_line.shape[0]
    groups = destination_groups(graph)
    inputs: dict[str, Tensor] = {}

    def keep(value: Tensor, hook) -> Tensor:
        inputs[hook.name] = value
        return value

    def save(value: Tensor, hook) -> Tensor:
        record[hook.name] = value.detach().to(model.device)  # blocks may sit on other devices
        return value

    def embeddings(value: Tensor, hook) -> Tensor:
        source = value if embed_line is None else embed_line.flatten(0, 1)
        return source.detach().requires_grad_(True)

    with model.per_head_hooks(split_inputs=True):
        relevance = relevance_hooks(model, rules)  # first: later hooks read their values
        hooks = [*relevance, ("hook_embed", embeddings), *((g.hook, keep) for g in groups)]
        if record is not None:
            hooks += [(name, save) for name in sorted(source_hook_names(graph)) if name in model.hook_dict]
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            batch = clean.shape[0]
            positions = metric.positions.to(model.device).repeat(steps)
            logits = model(
                clean.repeat(steps, 1),
                attention_mask=None if mask is None else mask.repeat(steps, 1),
                logit_positions=positions[:, None],
            )
            examples = torch.arange(batch, device=model.device).repeat(steps)
            total = metric.score(logits[:, 0].float(), examples).sum() / steps
            names = [g.hook for g in groups]
            grads = torch.autograd.grad(total, [inputs[n] for n in names], allow_unused=bool(rules))
    grads = [torch.zeros_like(inputs[n]) if g is None else g for n, g in zip(names, grads, strict=True)]
    return {
        name: grad.to(model.device).reshape(steps, batch, *grad.shape[1:]).sum(0)
        for name, grad in zip(names, grads, strict=True)
    }


def _scores_from_gradients(
    graph: Graph, grads: dict[str, Tensor], delta: Tensor, start: int
) -> Float[Tensor, " edge"]:
    """``delta``: ``[source, batch, pos, d]`` output differences, zero before position
    ``start`` (causality), so only later positions enter the product. Every destination
    slot's gradient is stacked into one matrix, so all scores come from one large matrix
    product (dense and compute-bound; the pairs that are not edges are computed and dropped)."""
    groups = destination_groups(graph)
    rows = []
    for group in groups:
        grad = grads[group.hook][:, start:]  # per head: [batch, pos, slot, d] -> [slot, batch*pos*d]
        rows.append(grad.permute(2, 0, 1, 3).flatten(1) if group.per_head else grad.flatten()[None])
    table = (torch.cat(rows).float() @ delta[:, :, start:].flatten(1).float().T).cpu()  # [all slots, source]
    scores = torch.zeros(len(graph.edges), dtype=torch.float32, device="cpu")
    first = 0
    for group in groups:
        slots = group.edge_ids.shape[0]
        present = group.edge_ids >= 0
        scores[group.edge_ids[present]] = table[first : first + slots, : group.n_sources][present]
        first += slots
    return scores


def _span_scores(
    graph: Graph, grads: dict[str, Tensor], delta: Tensor, start: int, spans: PositionSpans | None
) -> Float[Tensor, " edge *span"]:
    """``_scores_from_gradients`` for each span's positions (``[edge, span]``), or for all
    positions (``[edge]``) without spans."""
    if spans is None:
        return _scores_from_gradients(graph, grads, delta, start)
    if tuple(spans.ids.shape) != tuple(delta.shape[1:3]):
        raise ValueError(
            f"spans label {tuple(spans.ids.shape)} positions but the tokens are {tuple(delta.shape[1:3])}"
        )
    ids = spans.ids.to(delta.device)
    columns = []
    for span in range(spans.n_spans):
        inside = (ids == span)[None, :, :, None]
        columns.append(
            _scores_from_gradients(graph, grads, delta * inside, start)
            if bool(inside.any())
            else torch.zeros(len(graph.edges), device="cpu")
        )
    return torch.stack(columns, dim=1)


def _output_difference(model, graph: Graph, clean: Tensor, corrupt: Tensor, mask: Tensor | None) -> Tensor:
    """``corrupt - clean`` source outputs, ``[source, batch, pos, d_model]``."""
    return run_source_outputs(model, graph, corrupt, mask) - run_source_outputs(model, graph, clean, mask)


def eap_scores(
    model,
    clean: Tokens,
    corrupt: Tokens,
    graph: Graph,
    metric: PositionalMetric,
    *,
    attention_mask: AttentionMask | None = None,
    spans: PositionSpans | None = None,
) -> Float[Tensor, " edge *span"]:
    """EAP scores ``[edge]`` (summed over the batch): the estimated change of the summed
    metric when each edge alone carries the corrupted source; ``[edge, span]`` per span of
    positions with ``spans``."""
    return _first_order_scores(model, clean, corrupt, graph, metric, attention_mask, spans, rules=())


def relp_scores(
    model,
    clean: Tokens,
    corrupt: Tokens,
    graph: Graph,
    metric: PositionalMetric,
    *,
    attention_mask: AttentionMask | None = None,
    spans: PositionSpans | None = None,
    rules: Collection[str] = DEFAULT_RULES,
) -> Float[Tensor, " edge *span"]:
    """RelP scores ``[edge]`` (summed over the batch): EAP with LRP relevance coefficients in
    place of gradients (see the module docstring; ``rules``: a subset of
    ``relevance.RULES``; with ``"ah"`` query and key edges score 0). ``[edge, span]`` per
    span of positions with ``spans``.

    Example:
        >>> scores = relp_scores(model, pairs.clean, pairs.corrupt, Graph.from_model(model), pairs.metric())
    """
    return _first_order_scores(model, clean, corrupt, graph, metric, attention_mask, spans, rules=rules)


def _first_order_scores(
    model, clean, corrupt, graph: Graph, metric, attention_mask, spans, *, rules: Collection[str]
) -> Float[Tensor, " edge *span"]:
    check_graph_fits(model, graph)
    clean, corrupt = clean.to(model.device), corrupt.to(model.device)
    mask = None if attention_mask is None else attention_mask.to(model.device)
    clean_run: dict[str, Tensor] = {}
    grads = _destination_gradients(model, graph, clean, metric, mask, None, clean_run, rules)
    with torch.no_grad():
        delta = run_source_outputs(model, graph, corrupt, mask) - source_outputs(model, clean_run, graph)
    return _span_scores(graph, grads, delta, first_difference(clean, corrupt, "resample"), spans)


def eap_ig_scores(
    model,
    clean: Tokens,
    corrupt: Tokens,
    graph: Graph,
    metric: PositionalMetric,
    *,
    steps: int = 5,
    attention_mask: AttentionMask | None = None,
    spans: PositionSpans | None = None,
) -> Float[Tensor, " edge *span"]:
    """EAP-IG scores ``[edge]`` (summed over the batch): EAP with the gradient averaged over
    ``steps`` points between the corrupt and clean input embeddings; ``[edge, span]`` per
    span of positions with ``spans``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    check_graph_fits(model, graph)
    clean, corrupt = clean.to(model.device), corrupt.to(model.device)
    mask = None if attention_mask is None else attention_mask.to(model.device)
    with torch.no_grad():
        clean_embed, corrupt_embed = model.embed(clean), model.embed(corrupt)
    alphas = (torch.arange(steps, device=model.device, dtype=clean_embed.dtype) + 0.5) / steps
    line = corrupt_embed + alphas[:, None, None, None] * (clean_embed - corrupt_embed)
    delta = _output_difference(model, graph, clean, corrupt, mask)
    grads = _destination_gradients(model, graph, clean, metric, mask, line)
    return _span_scores(graph, grads, delta, first_difference(clean, corrupt, "resample"), spans)


def node_scores(graph: Graph, edge_scores: Float[Tensor, " edge"]) -> dict[Node, float]:
    """A node-level view: each source node's summed outgoing edge scores."""
    totals: dict[Node, float] = {}
    for edge, score in zip(graph.edges, edge_scores.tolist(), strict=True):
        totals[edge.source] = totals.get(edge.source, 0.0) + score
    return totals
