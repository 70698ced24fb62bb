"""Attention explained: which heads carry an edge (OV side) and what drives a head's score (QK side).

In the frozen replacement (``circuits.tracing.replacement``: attention patterns and norm scales
fixed, MLP outputs held at their values) the map from a source node to a target node is linear,
and each attention layer's output is a sum over its heads of ``z[:, :, h] W_O[h]`` (``hook_z``
is the cut). So for one layer ``l`` the chain rule splits every edge exactly:

    A[target, source] = sum_h <d target / d z_{l,h},  dz_{l,h}(source)>  +  remainder_l

``heads[l, h]`` is the part of the edge whose paths pass through head ``h`` of layer ``l`` (its
OV circuit, with the frozen pattern); ``remainder[l]`` is the part that does not pass through
layer ``l``'s attention at all (the residual path, and paths through other layers' heads). Each
row adds up to the edge weight: ``heads[l].sum() + remainder[l] == A[target, source]``. A path
through several attention layers is counted once in each of them. The gradients
``d target / d z`` come from one backward pass per batch of targets (as ``trace``); the source's
own ``dz`` from one forward of the frozen replacement with only that source switched on, minus
one with every node off (both runs share the biases, which cancel).

The QK side (``qk_split``): the pre-softmax score of head ``h`` at query position ``q`` and key
position ``k`` is ``scale * q_vec . k_vec`` (the model's rotated, QK-normed queries and keys,
from its own hooks; before any soft-cap and the mask). With norm scales frozen, ``q_vec`` is the
sum of each node's part ``q_i`` plus a bias part ``q_0`` (the query when every feature, error
and token embedding is zero: decoder biases, ``b_O``, norm biases, ``b_Q``), likewise
``k_vec``; the score is bilinear:

    score = sum_ij pairs[i, j] + sum_i query_bias[i] + sum_j key_bias[j] + bias
    pairs[i, j] = scale q_i . k_j,  query_bias[i] = scale q_i . k_0,
    key_bias[j] = scale q_0 . k_j,  bias = scale q_0 . k_0

``score`` itself is read from the prompt's own queries and keys (every node on), so the identity
is a check that the nodes cover everything. ``query_totals`` (``pairs.sum(1) + query_bias``) is how much each node on the query side drives
the score against the whole key; ``key_totals`` the same on the key side.

Example:
    >>> rep = Replacement(model, transcoders, graph.tokens[None])
    >>> split = head_split(rep, graph, graph.logit_node(0), graph.token_node(1))
    >>> split.heads[1].argmax()                  # the head of layer 1 that carries most of it
    >>> qk = qk_split(rep, graph, layer=1, head=0, query_pos=5, key_pos=2)
    >>> graph.node_label(int(qk.nodes[qk.key_totals.argmax()]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.tracing.graph import AttributionGraph
from circuits.tracing.replacement import Replacement
from circuits.tracing.trace import target_values


@dataclass(frozen=True, eq=False)
class HeadSplit:
    """One edge split over attention heads (module docstring): ``heads`` ``[layer, head]`` and
    ``remainder`` ``[layer]``, each row adding up to ``weight``; tensors on the CPU, float32."""

    target: int
    source: int
    weight: float
    heads: Float[Tensor, "layer head"]
    remainder: Float[Tensor, " layer"]

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest ``|share|`` (non-zero only), as ``(layer, head, share)``."""
        flat = self.heads.flatten()
        order = flat.abs().argsort(descending=True)[:k]
        n_heads = self.heads.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads, float(flat[i])) for i in order if flat[i] != 0]


@dataclass(frozen=True, eq=False)
class QKSplit:
    """A head's pre-softmax score at one (query, key) pair, split over graph nodes (module
    docstring). ``nodes`` are graph node ids; ``pairs[i, j]`` pairs query-side node ``i`` with
    key-side node ``j``; tensors on the CPU, float32."""

    layer: int
    head: int
    query_pos: int
    key_pos: int
    nodes: Int[Tensor, " node"]
    pairs: Float[Tensor, "node node"]
    query_bias: Float[Tensor, " node"]
    key_bias: Float[Tensor, " node"]
    bias: float
    score: float

    @property
    def query_totals(self) -> Float[Tensor, " node"]:
        return self.pairs.sum(1) + self.query_bias

    @property
    def key_totals(self) -> Float[Tensor, " node"]:
        return self.pairs.sum(0) + self.key_bias


def head_split(rep: Replacement, graph: AttributionGraph, target: int, source: int) -> HeadSplit:
    """The split of edge ``A[target, source]`` over the heads of every attention layer.

    Example:
        >>> split = head_split(rep, graph, graph.logit_node(0), graph.token_node(2))
        >>> split.heads.sum(1) + split.remainder       # every entry == split.weight
    """
    return head_splits(rep, graph, [(target, source)])[0]


def head_splits(
    rep: Replacement,
    graph: AttributionGraph,
    edges: Sequence[tuple[int, int]],
    *,
    batch_size: int = 16,
) -> list[HeadSplit]:
    """``head_split`` for many ``(target, source)`` edges: per chunk of ``batch_size`` edges,
    one forward and backward for their targets and one forward for their sources.

    Example:
        >>> rows, cols = graph.edges.indices()
        >>> splits = head_splits(rep, graph, list(zip(rows.tolist(), cols.tolist())))
    """
    _check(rep, graph)
    splits = []
    for start in range(0, len(edges), batch_size):
        chunk = edges[start : start + batch_size]
        targets = sorted({t for t, _ in chunk})
        sources = sorted({s for _, s in chunk})
        grads = _target_z_grads(rep, graph, targets)
        z = _node_runs(rep, graph, sources, _z_names(rep.model))
        t_row = torch.tensor([targets.index(t) for t, _ in chunk], device=rep.model.device)
        s_row = torch.tensor([sources.index(s) + 1 for _, s in chunk], device=rep.model.device)
        with torch.no_grad():
            heads = torch.stack(
                [
                    (g[t_row].float() * (zs[s_row] - zs[:1]).float()).sum(dim=(1, 3))
                    for g, zs in zip(grads, z, strict=True)
                ],
                dim=1,
            ).cpu()  # [edge, layer, head]
        weights = graph.edge_weights(
            torch.tensor([t for t, _ in chunk]), torch.tensor([s for _, s in chunk])
        ).float()
        remainder = weights[:, None] - heads.sum(-1)
        splits += [
            HeadSplit(t, s, float(w), h, r)
            for (t, s), w, h, r in zip(chunk, weights, heads, remainder, strict=True)
        ]
    return splits


def qk_split(
    rep: Replacement,
    graph: AttributionGraph,
    *,
    layer: int,
    head: int,
    query_pos: int,
    key_pos: int,
    batch_size: int = 16,
) -> QKSplit:
    """Which nodes drive head ``(layer, head)``'s score from ``query_pos`` to ``key_pos``
    (module docstring). The nodes are every source node that can reach the layer's attention
    input at or before the query position: features of earlier layers, error nodes of earlier
    layers and token embeddings.

    Example:
        >>> qk = qk_split(rep, graph, layer=1, head=0, query_pos=5, key_pos=2)
        >>> qk.pairs.sum() + qk.query_bias.sum() + qk.key_bias.sum() + qk.bias   # == qk.score
    """
    _check(rep, graph)
    model = rep.model
    arch = model.architecture
    if not (
        0 <= layer < arch.n_layers and 0 <= head < arch.n_heads and 0 <= key_pos <= query_pos < graph.n_pos
    ):
        raise ValueError(
            f"need 0 <= layer < {arch.n_layers}, 0 <= head < {arch.n_heads} and "
            f"0 <= key_pos <= query_pos < {graph.n_pos}; got {layer}, {head}, {key_pos}, {query_pos}"
        )
    nodes = _reaching_nodes(graph, layer, query_pos)
    q_name, k_name = _qk_names(model, layer)
    kv_head = head // model.blocks[layer].attn.cfg.heads_per_kv_head
    q, k = _node_runs(
        rep,
        graph,
        nodes.tolist(),
        [q_name, k_name],
        pick=[lambda x: x[:, query_pos, head], lambda x: x[:, key_pos, kv_head]],
    )
    hooks, seen = _recorders((q_name, k_name))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):  # the prompt itself: every node on
        rep.run([out[None] for out in rep.mlp_out], embedding=rep.embedding[None])
    prompt_q, prompt_k = seen[q_name][0, query_pos, head].float(), seen[k_name][0, key_pos, kv_head].float()
    scale = model.blocks[layer].attn.cfg.scale
    q, k = q.float(), k.float()
    q0, k0 = q[0], k[0]
    qi, kj = q[1:] - q0, k[1:] - k0
    return QKSplit(
        layer=layer,
        head=head,
        query_pos=query_pos,
        key_pos=key_pos,
        nodes=nodes,
        pairs=(scale * qi @ kj.T).cpu(),
        query_bias=(scale * qi @ k0).cpu(),
        key_bias=(scale * kj @ q0).cpu(),
        bias=float(scale * q0 @ k0),
        score=float(scale * prompt_q @ prompt_k),
    )


# ---------------------------------------------------------------- helpers


def _check(rep: Replacement, graph: AttributionGraph) -> None:
    if len(rep.active) != graph.n_features or not torch.equal(rep.tokens[0].cpu(), graph.tokens):
        raise ValueError(
            "the replacement and the graph describe different prompts or transcoders: build the "
            "replacement with the graph's own model, transcoders and Replacement(model, tc, graph.tokens[None])"
        )


def _recorders(names: Sequence[str]) -> tuple[list[tuple[str, Callable]], dict[str, Tensor]]:
    """Forward hooks that keep the activations at ``names`` (in the returned dict), unchanged."""
    seen: dict[str, Tensor] = {}

    def record(x: Tensor, hook: Any) -> None:
        seen[hook.name] = x

    return [(name, record) for name in names], seen


def _z_names(model: Any) -> list[str]:
    return [f"blocks.{layer}.attn.hook_z" for layer in range(model.architecture.n_layers)]


def _qk_names(model: Any, layer: int) -> tuple[str, str]:
    """The last query and key hooks before the scores: rotated, else QK-normed, else projected."""
    attn = f"blocks.{layer}.attn."
    for q, k in (("hook_rot_q", "hook_rot_k"), ("hook_q_normed", "hook_k_normed"), ("hook_q", "hook_k")):
        if attn + q in model.hook_dict:
            return attn + q, attn + k
    raise ValueError(f"layer {layer} has no query hook")


def _reaching_nodes(graph: AttributionGraph, layer: int, max_pos: int) -> Int[Tensor, " node"]:
    """Source nodes whose value enters the residual stream before layer ``layer``'s attention
    at a position ``<= max_pos``: features and errors of earlier layers, token embeddings."""
    features = (graph.features[:, 0] < layer) & (graph.features[:, 1] <= max_pos)
    error_layer, error_pos = torch.cartesian_prod(torch.arange(graph.n_layers), torch.arange(graph.n_pos)).T
    errors = (error_layer < layer) & (error_pos <= max_pos)
    tokens = torch.arange(graph.n_pos) <= max_pos
    return torch.cat(
        [
            features.nonzero()[:, 0],
            graph.n_features + errors.nonzero()[:, 0],
            graph.token_node(0) + tokens.nonzero()[:, 0],
        ]
    )


def _node_inputs(
    rep: Replacement, graph: AttributionGraph, nodes: Sequence[int]
) -> tuple[list[Tensor], Tensor]:
    """MLP outputs (per layer) and embeddings ``[len(nodes) + 1, pos, d_model]`` for the frozen
    replacement: row 0 has every node at zero (MLP outputs = decoder biases, embedding 0), row
    ``i + 1`` adds node ``i`` alone (a feature's decoders times its activation, an error, a
    token's embedding)."""
    model, tc, active = rep.model, rep.transcoders, rep.active
    n_layers, n_pos = model.architecture.n_layers, rep.n_pos
    device, dtype = model.device, model.dtype
    rows = len(nodes) + 1
    node = torch.tensor(list(nodes), dtype=torch.long)
    kinds = [graph.kind(n) for n in node.tolist()]
    if "logit" in kinds:
        raise ValueError("logit nodes are targets only; they have no value to switch on")
    row = torch.arange(1, rows)
    mlp_out = [tc.b_dec[layer].to(dtype).expand(rows, n_pos, -1).clone() for layer in range(n_layers)]
    embedding = torch.zeros(rows, n_pos, model.architecture.d_model, dtype=dtype, device=device)
    is_feature = node < graph.n_features
    is_error = ~is_feature & (node < graph.token_node(0))
    is_token = node >= graph.token_node(0)
    feature, feature_row = node[is_feature].to(device), row[is_feature].to(device)
    for source in range(n_layers):
        chosen = active.layer[feature] == source
        f, r = feature[chosen], feature_row[chosen]
        for out_layer in tc.output_layers(source):
            vectors = active.value[f, None] * tc.W_dec[source][active.index[f], out_layer - source]
            mlp_out[out_layer].index_put_((r, active.pos[f]), vectors.to(dtype), accumulate=True)
    error = node[is_error] - graph.n_features
    error_layer, error_pos = error.div(n_pos, rounding_mode="floor"), error % n_pos
    for layer in error_layer.unique().tolist():
        chosen = error_layer == layer
        r, p = row[is_error][chosen].to(device), error_pos[chosen].to(device)
        mlp_out[layer].index_put_((r, p), rep.errors[layer][p], accumulate=True)
    token_pos = (node[is_token] - graph.token_node(0)).to(device)
    embedding[row[is_token].to(device), token_pos] = rep.embedding[token_pos]
    return mlp_out, embedding


def _node_runs(
    rep: Replacement,
    graph: AttributionGraph,
    nodes: Sequence[int],
    names: Sequence[str],
    *,
    pick: Sequence[Callable[[Tensor], Tensor]] | None = None,
    batch_size: int = 16,
) -> list[Tensor]:
    """Each hook in ``names`` on the frozen replacement with every node off (row 0) and with each
    node alone on (row ``i + 1``), reduced by ``pick`` (default: kept whole), in chunks of
    ``batch_size`` nodes."""
    pick = pick or [lambda x: x] * len(names)
    found: list[list[Tensor]] = [[] for _ in names]
    nodes = list(nodes)
    chunks = [nodes[i : i + batch_size] for i in range(0, len(nodes), batch_size)] or [[]]
    for number, chunk in enumerate(chunks):
        mlp_out, embedding = _node_inputs(rep, graph, chunk)
        hooks, seen = _recorders(names)
        with torch.no_grad(), rep.model.hooks(fwd_hooks=hooks):
            rep.run(mlp_out, embedding=embedding, batch=embedding.shape[0])
        for store, name, reduce in zip(found, names, pick, strict=True):
            value = reduce(seen[name])
            store.append(value if number == 0 else value[1:])  # row 0 once
    return [torch.cat(parts) for parts in found]


def _target_z_grads(
    rep: Replacement, graph: AttributionGraph, targets: Sequence[int]
) -> list[Float[Tensor, "batch pos head d_head"]]:
    """``d target / d z`` at every attention layer, one row per target, from one forward and one
    backward of the frozen replacement (MLP outputs fixed: direct effects only)."""
    model = rep.model
    target = torch.tensor(list(targets), device=model.device)
    is_logit = target >= graph.logit_node(0)
    internal = torch.where(is_logit, target - graph.logit_node(0) + graph.n_features, target)
    if bool((~is_logit & (target >= graph.n_features)).any()):
        raise ValueError("targets are feature or logit nodes (errors and tokens have no incoming edges)")
    batch = target.shape[0]
    embedding = rep.embedding[None].expand(batch, -1, -1).clone().requires_grad_(True)
    outputs = [out[None].expand(batch, -1, -1) for out in rep.mlp_out]
    names = _z_names(model)
    hooks, seen = _recorders(names)
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        inputs, normed = rep.run(outputs, embedding=embedding, batch=batch)
        values = target_values(rep, internal, graph.logit_tokens.to(model.device), inputs, normed)
        return list(torch.autograd.grad(values.sum(), [seen[n] for n in names], materialize_grads=True))
