"""``trace``: the attribution graph of one prompt, by batched backward passes.

Following Ameisen et al. (2025) and circuit-tracer: build the local replacement model
(``Replacement``: transcoders for the MLPs, error nodes, frozen attention patterns and norm
scales), pick the logit nodes (the most likely next tokens until their probability reaches
``logit_probability``, at most ``max_logits``), and for every *target* node (each active
feature's pre-activation and each logit node) compute its direct effect from every *source*
node (active features, error nodes, token embeddings).

One backward pass serves a batch of targets: the frozen replacement runs on ``B`` copies of the
prompt whose MLP outputs and embedding are leaves; row ``b``'s target is summed into one scalar,
so the gradient in row ``b`` is target ``b``'s alone. A source's edge is its value times the
gradient where it enters the residual stream:

- a feature ``s`` of layer ``l``: ``a_s * sum_{l'} grad(mlp_out_l')[pos_s] . W_dec[l][s, l' - l]``
  (over the MLP outputs its decoders write: ``l`` only for a per-layer transcoder);
- an error node ``(l, p)``: ``grad(mlp_out_l)[p] . error_l[p]``;
- a token ``p``: ``grad(resid_pre_0)[p] . embedding[p]``.

Batches go through the row runner (``mechinterp.patching.rows.run_rows``): sized to the memory
budget (or ``batch_size``), halved on out-of-memory, with a progress bar. Each batch's dense
block ``[B, n_sources]`` is reduced to its non-zero entries, so the graph is stored as a sparse
COO matrix; no ``[node x node]`` dense matrix is ever built.

Example:
    >>> tc = random_transcoders(model, 64)
    >>> graph = trace(model, tc, "The cat sat on the", max_logits=5)
    >>> graph
    AttributionGraph(...)
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.tracing.graph import AttributionGraph
from circuits.tracing.replacement import Replacement
from circuits.tracing.transcoders import Transcoder
from mechinterp.dims import Tokens
from mechinterp.patching.memory import bytes_per_row
from mechinterp.patching.rows import RowSet, run_rows


def prompt_tokens(model: Any, prompt: str | Tensor) -> Int[Tensor, "1 pos"]:
    """``[1, pos]`` token ids for a string (tokenised by the model) or a 1-D / ``[1, pos]`` tensor."""
    if isinstance(prompt, str):
        return model.to_tokens(prompt)
    tokens = prompt[None] if prompt.ndim == 1 else prompt
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(
            f"trace takes one prompt: a string, [pos] or [1, pos] token ids; got {tuple(prompt.shape)}"
        )
    return tokens.to(model.device)


def select_logits(
    logits: Float[Tensor, " d_vocab"], max_logits: int, logit_probability: float
) -> tuple[Int[Tensor, " logit"], Float[Tensor, " logit"]]:
    """The most likely tokens, in order, until their cumulative probability reaches
    ``logit_probability`` (at most ``max_logits``), and their probabilities."""
    if max_logits < 1 or not 0 < logit_probability <= 1:
        raise ValueError(
            f"need max_logits >= 1 and 0 < logit_probability <= 1; got {max_logits}, {logit_probability}"
        )
    probs = logits.float().softmax(-1)
    top = probs.topk(min(max_logits, probs.shape[0]))
    reached = int((top.values.cumsum(0) < logit_probability).sum()) + 1
    n = min(reached, top.values.shape[0])
    return top.indices[:n], top.values[:n]


def trace(
    model: Any,
    transcoders: Transcoder,
    prompt: str | Int[Tensor, " pos"] | Tokens,
    *,
    max_logits: int = 10,
    logit_probability: float = 0.95,
    batch_size: int | Literal["auto"] = "auto",
    max_memory: int | None = None,
    progress: bool = True,
) -> AttributionGraph:
    """The attribution graph of ``prompt`` (see the module docstring and ``AttributionGraph``).

    Args:
        transcoders: a ``Transcoder`` for every layer (``load_transcoders``), on the model's device.
        prompt: text (tokenised with the model's defaults) or token ids ``[pos]`` / ``[1, pos]``.
        max_logits, logit_probability: which next tokens become logit nodes.
        batch_size: targets per backward pass, or ``"auto"`` to fit ``max_memory`` bytes
            (default: half the free memory of the model's device).
        progress: show a progress bar over the targets.

    Example:
        >>> graph = trace(model, transcoders, "When Mary and John went to the store, John gave a drink to")
        >>> pruned = prune_graph(graph)
    """
    if transcoders.device != model.device:
        raise ValueError(
            f"transcoders are on {transcoders.device}, the model on {model.device}; "
            f"move them with transcoders.to({str(model.device)!r})"
        )
    tokens = prompt_tokens(model, prompt)
    rep = Replacement(model, transcoders, tokens)
    logit_tokens, logit_probs = select_logits(rep.clean_logits[-1], max_logits, logit_probability)
    active = rep.active
    n_layers, n_pos, d_model = model.architecture.n_layers, rep.n_pos, model.architecture.d_model
    n_features, n_logits = len(active), logit_tokens.shape[0]
    n_sources = n_features + (n_layers + 1) * n_pos
    n_targets = n_features + n_logits
    logit_offset = n_sources  # logit node k has id n_sources + k

    found: list[tuple[Tensor, Tensor, Tensor]] = []
    target_values = torch.zeros(n_targets, dtype=torch.float32)

    def run_chunk(rows: Tensor, start: int) -> None:
        targets = rows.to(model.device)
        values, block = _direct_effects(rep, targets, logit_tokens)
        target_values[rows] = values.detach().float().cpu()
        target, source = block.nonzero(as_tuple=True)
        node = targets[target]
        node = torch.where(node < n_features, node, node - n_features + logit_offset)
        found.append((node.cpu(), source.cpu(), block[target, source].detach().float().cpu()))

    element = torch.finfo(model.dtype).bits // 8
    leaves = 2 * (n_layers + 1) * n_pos * d_model  # MLP outputs and embedding, and their gradients

    def row_bytes(positions: int) -> int:
        return 3 * bytes_per_row(model, positions, 1, positions) + (leaves + 2 * n_sources) * element

    zeros = torch.zeros(n_targets, dtype=torch.long)
    stats = run_rows(
        RowSet(layer=zeros, start=zeros),
        run_chunk,
        row_bytes=row_bytes,
        n_positions=n_pos,
        device=model.device,
        max_rows=batch_size,
        max_memory=max_memory,
        progress=progress,
        description="tracing",
    )
    n_nodes = n_sources + n_logits
    if found:
        target, source, weight = (torch.cat(parts) for parts in zip(*found, strict=True))
    else:
        target = source = torch.zeros(0, dtype=torch.long)
        weight = torch.zeros(0)
    edges = torch.sparse_coo_tensor(
        torch.stack([target, source]), weight, (n_nodes, n_nodes), check_invariants=True
    ).coalesce()

    node_values = torch.zeros(n_nodes)
    node_values[:n_features] = target_values[:n_features]
    errors = torch.stack([e.norm(dim=-1) for e in rep.errors]).flatten().float().cpu()
    node_values[n_features : n_features + n_layers * n_pos] = errors
    node_values[logit_offset:] = target_values[n_features:]
    tokenizer = getattr(model, "tokenizer", None)
    strings = (
        tuple(model.to_str_tokens(tokens[0]))
        if tokenizer is not None
        else tuple(str(t) for t in tokens[0].tolist())
    )
    logit_strings = [model.to_string([t]) if tokenizer is not None else str(t) for t in logit_tokens.tolist()]
    return AttributionGraph(
        tokens=tokens[0].cpu(),
        token_strings=strings,
        n_layers=n_layers,
        features=torch.stack([active.layer, active.pos, active.index], dim=1).cpu(),
        activations=active.value.detach().float().cpu(),
        logit_tokens=logit_tokens.cpu(),
        logit_probabilities=logit_probs.float().cpu(),
        edges=edges,
        values=node_values,
        widths=transcoders.widths,
        model_name=model.architecture.model_name,
        transcoder_kind=transcoders.kind,
        info={"logit_strings": logit_strings, "chunks": stats.chunks, "rows_per_chunk": stats.rows_per_chunk},
    )


def _direct_effects(
    rep: Replacement, targets: Int[Tensor, " batch"], logit_tokens: Int[Tensor, " logit"]
) -> tuple[Float[Tensor, " batch"], Float[Tensor, "batch source"]]:
    """Target values ``[B]`` and the direct effects of every source on each target ``[B, n_sources]``
    (sources: features, errors by layer then position, tokens), from one forward and one backward
    of the frozen replacement on ``B`` copies of the prompt."""
    tc, active, batch = rep.transcoders, rep.active, targets.shape[0]
    embedding = rep.embedding[None].expand(batch, -1, -1).clone().requires_grad_(True)
    outputs = [out[None].expand(batch, -1, -1).clone().requires_grad_(True) for out in rep.mlp_out]
    with torch.enable_grad():
        inputs, normed = rep.run(outputs, embedding=embedding, batch=batch)
        values = target_values(rep, targets, logit_tokens, inputs, normed)
        grads = torch.autograd.grad(values.sum(), [embedding, *outputs], materialize_grads=True)
    g_embed, g_out = grads[0], grads[1:]
    with torch.no_grad():
        parts = []
        for source in range(len(g_out)):
            chosen = active.layer == source
            pos, index = active.pos[chosen], active.index[chosen]
            effect = torch.zeros(batch, pos.shape[0], dtype=torch.float32, device=targets.device)
            for out_layer in tc.output_layers(source):
                vectors = tc.W_dec[source][index, out_layer - source]  # [n, d_model]
                effect += (g_out[out_layer][:, pos].to(tc.dtype) * vectors).sum(-1).float()
            parts.append(effect * active.value[chosen].float())
        parts += [(g * error).sum(-1).float() for g, error in zip(g_out, rep.errors, strict=True)]
        parts.append((g_embed * rep.embedding).sum(-1).float())
        return values.detach(), torch.cat(parts, dim=1)


def target_values(
    rep: Replacement,
    targets: Int[Tensor, " batch"],
    logit_tokens: Int[Tensor, " logit"],
    inputs: list[Tensor],
    normed: Float[Tensor, "batch pos d_model"],
) -> Float[Tensor, " batch"]:
    """Row ``b``'s target value from one run of the frozen replacement (``Replacement.run``'s
    ``inputs`` and ``normed``): a feature's pre-activation (``targets[b] < n_features``) or a
    logit node's centred uncapped logit (``targets[b] = n_features + k`` for ``logit_tokens[k]``)."""
    model, tc, active = rep.model, rep.transcoders, rep.active
    batch, n_features = targets.shape[0], len(active)
    rows = torch.arange(batch, device=targets.device)
    values = torch.zeros(batch, dtype=torch.float32, device=targets.device)
    is_feature = targets < n_features
    feature_rows, features = rows[is_feature], targets[is_feature]
    for layer in range(len(inputs)):
        chosen = active.layer[features] == layer
        if not chosen.any():
            continue
        feature, row = features[chosen], feature_rows[chosen]
        x = inputs[layer][row, active.pos[feature]].to(tc.dtype)
        index = active.index[feature]
        pre = (x * tc.W_enc[layer][index]).sum(-1) + tc.b_enc[layer][index]
        values = values.index_put((row,), pre.float())
    if (~is_feature).any():
        logit = model.unembed.uncapped(normed[rows[~is_feature], -1]).float()
        token = logit_tokens[targets[~is_feature] - n_features]
        centred = logit.gather(1, token[:, None])[:, 0] - logit.mean(-1)
        values = values.index_put((rows[~is_feature],), centred)
    return values
