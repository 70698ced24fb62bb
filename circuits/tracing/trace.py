"""``trace``: the attribution graph of one prompt, by batched backward passes.

Following Ameisen et al. (2025) and circuit-tracer: build the local replacement model
(``Replacement``: transcoders for the MLPs, error nodes, frozen attention patterns and norm
scales), pick the logit nodes (the most likely next tokens until their probability reaches
``logit_probability``, at most ``max_logits``), and for every *target* node (each active
feature's pre-activation and each logit node) compute its direct effect from every *source*
node (active features, error nodes, token embeddings).

The replacement is linear in its sources, so one forward of it (batch 1, graph retained:
``FrozenBackward``) serves every target: a batch of ``B`` targets is one vector-Jacobian product
of that graph with ``B`` stacked output gradients (``is_grads_batched``: vmap over the
backward), the gradient in row ``b`` being target ``b``'s alone. A source's edge is its value
times the gradient where it enters the residual stream:

- a feature ``s`` of layer ``l``: ``a_s * sum_{l'} grad(mlp_out_l')[pos_s] . W_dec[l][s, l' - l]``
  (over the MLP outputs its decoders write: ``l`` only for a per-layer transcoder), computed per
  position as one batched matrix product with the decoders of the features active there;
- an error node ``(l, p)``: ``grad(mlp_out_l)[p] . error_l[p]``;
- a token ``p``: ``grad(resid_pre_0)[p] . embedding[p]``.

Batches go through the row runner (``mechinterp.patching.rows.run_rows``): sized to the memory
budget (or ``batch_size``), halved on out-of-memory, ordered by target layer (a batch of shallow
targets backpropagates through few layers). Each batch's dense block ``[B, n_sources]`` is
reduced to its non-zero entries, so the graph is stored as a sparse COO matrix; no
``[node x node]`` dense matrix is ever built. ``max_feature_nodes`` bounds the work on long
prompts: the logit nodes first, then features in order of their influence on the logits
through the edges found so far (circuit-tracer's order).

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
from tqdm.auto import tqdm

from circuits.tracing.graph import AttributionGraph
from circuits.tracing.prune import influence, normalized_weights
from circuits.tracing.replacement import ActiveFeatures, Replacement
from circuits.tracing.transcoders import Transcoder
from mechinterp.dims import Tokens
from mechinterp.patching.memory import bytes_per_row
from mechinterp.patching.rows import RowSet, rows_per_chunk, run_rows


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
    max_feature_nodes: int | None = None,
    batch_size: int | Literal["auto"] = "auto",
    max_memory: int | None = None,
    progress: bool = True,
) -> AttributionGraph:
    """The attribution graph of ``prompt`` (see the module docstring and ``AttributionGraph``).

    Args:
        transcoders: a ``Transcoder`` for every layer (``load_transcoders``), on the model's device.
        prompt: text (tokenised with the model's defaults) or token ids ``[pos]`` / ``[1, pos]``.
        max_logits, logit_probability: which next tokens become logit nodes.
        max_feature_nodes: trace the incoming edges of at most this many features, the most
            influential first (influence on the logits through the edges found so far, updated
            every few batches, as circuit-tracer does); the rest stay source nodes without
            incoming edges (``graph.traced`` says which). ``None`` traces every active feature.
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
    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise ValueError(f"max_feature_nodes must be >= 0 or None, got {max_feature_nodes}")
    tokens = prompt_tokens(model, prompt)
    rep = Replacement(model, transcoders, tokens)
    logit_tokens, logit_probs = select_logits(rep.clean_logits[-1], max_logits, logit_probability)
    backward = FrozenBackward(rep, logit_tokens)
    active = rep.active
    n_layers, n_pos = model.architecture.n_layers, rep.n_pos
    n_features, n_logits = len(active), logit_tokens.shape[0]
    n_sources = n_features + (n_layers + 1) * n_pos
    n_nodes = n_sources + n_logits
    limit = n_features if max_feature_nodes is None else min(max_feature_nodes, n_features)
    target_layers = torch.cat([active.layer.cpu(), torch.full((n_logits,), n_layers)])
    found = _Edges(n_nodes)
    traced = torch.zeros(n_features, dtype=torch.bool)
    stats = {"chunks": 0, "rows_per_chunk": 0}

    def row_bytes(positions: int) -> int:
        return backward.row_bytes(positions, n_sources)

    with tqdm(total=n_logits + limit, desc="tracing", unit="node", disable=not progress) as bar:

        def run(targets: Tensor) -> None:
            """Trace the incoming edges of ``targets`` (target ids: features, then logits)."""

            def run_chunk(rows: Tensor, start: int) -> None:
                chunk = targets[rows]
                block = backward.direct_effects(chunk.to(model.device))
                target, source = block.nonzero(as_tuple=True)
                node = chunk[target.cpu()]
                node = torch.where(node < n_features, node, node - n_features + n_sources)
                found.add(node, source.cpu(), block[target, source].float().cpu())
                bar.update(len(rows))

            zeros = torch.zeros(len(targets), dtype=torch.long)
            run_stats = run_rows(
                RowSet(layer=target_layers[targets], start=zeros),
                run_chunk,
                row_bytes=row_bytes,
                n_positions=n_pos,
                device=model.device,
                max_rows=batch_size,
                max_memory=max_memory,
                progress=False,
            )
            stats["chunks"] += run_stats.chunks
            stats["rows_per_chunk"] = max(stats["rows_per_chunk"], run_stats.rows_per_chunk)

        run(torch.arange(n_features, n_features + n_logits))
        if limit == n_features:
            traced[:] = True
            run(torch.arange(n_features))
        logit_weights = torch.zeros(n_nodes)
        logit_weights[n_sources:] = logit_probs.float().cpu()
        round_size = 4 * rows_per_chunk(row_bytes(n_pos), model.device, batch_size, max_memory)
        while int(traced.sum()) < limit:  # by influence through the edges found so far
            scores = found.influence(logit_weights)[:n_features].masked_fill(traced, -1.0)
            chosen = scores.topk(min(limit - int(traced.sum()), round_size)).indices  # ties: node order
            traced[chosen] = True
            run(chosen)

    values = backward.values.float().cpu()
    node_values = torch.zeros(n_nodes)
    node_values[:n_features] = values[:n_features]
    errors = torch.stack([e.norm(dim=-1) for e in rep.errors]).flatten().float().cpu()
    node_values[n_features : n_features + n_layers * n_pos] = errors
    node_values[n_sources:] = values[n_features:]
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
        traced=traced,
        logit_tokens=logit_tokens.cpu(),
        logit_probabilities=logit_probs.float().cpu(),
        edges=found.matrix(),
        values=node_values,
        widths=transcoders.widths,
        model_name=model.architecture.model_name,
        transcoder_kind=transcoders.kind,
        info={"logit_strings": logit_strings, **stats},
    )


class _Edges:
    """The edges found so far, as COO parts on the CPU; ``matrix()`` joins them."""

    def __init__(self, n_nodes: int):
        self.n_nodes = n_nodes
        self.parts: list[tuple[Tensor, Tensor, Tensor]] = []

    def add(self, target: Tensor, source: Tensor, weight: Tensor) -> None:
        self.parts.append((target, source, weight))

    def triples(self) -> tuple[Tensor, Tensor, Tensor]:
        if not self.parts:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty, torch.zeros(0)
        target, source, weight = (torch.cat(parts) for parts in zip(*self.parts, strict=True))
        self.parts = [(target, source, weight)]
        return target, source, weight

    def matrix(self) -> Float[Tensor, "node node"]:
        target, source, weight = self.triples()
        size = (self.n_nodes, self.n_nodes)
        return torch.sparse_coo_tensor(
            torch.stack([target, source]), weight, size, check_invariants=True
        ).coalesce()

    def influence(self, start: Float[Tensor, " node"]) -> Float[Tensor, " node"]:
        """Each node's influence on ``start`` (``prune.influence``) through the edges found so far."""
        target, source, weight = self.triples()
        return influence(target, source, normalized_weights(target, weight, self.n_nodes), start)


class FrozenBackward:
    """Direct effects on batches of targets, all from one forward of the frozen replacement.

    The replacement is linear in its sources, so its autograd graph does not depend on the
    target: one forward (batch 1) keeps the graph, and each batch of ``B`` targets is one
    vector-Jacobian product of it with ``B`` stacked output gradients
    (``torch.autograd.grad(..., is_grads_batched=True)``, vmap over the backward). A feature
    target's output gradient is its encoder row at its (layer, position); a logit node's is its
    unembedding column minus the mean column, at the last position.

    Attributes: ``values`` ``[n_features + n_logits]``, every target's value (pre-activation or
    centred uncapped logit) on the prompt.
    """

    def __init__(self, rep: Replacement, logit_tokens: Int[Tensor, " logit"]):
        self.rep, self.logit_tokens = rep, logit_tokens
        model, tc = rep.model, rep.transcoders
        self.embedding = rep.embedding[None].clone().requires_grad_(True)
        self.outputs = [out[None].clone().requires_grad_(True) for out in rep.mlp_out]
        with torch.enable_grad():
            self.inputs, normed = rep.run(self.outputs, embedding=self.embedding)
        self.last = normed[:, -1]
        W_U = model.unembed.W_U  # uncapped logits are x @ W_U + b_U: a centred logit's gradient
        self.logit_directions = (W_U[:, logit_tokens.to(W_U.device)] - W_U.mean(1, keepdim=True)).T
        with torch.no_grad():
            n = len(rep.active)
            everything = torch.arange(n + logit_tokens.shape[0], device=model.device)
            one_row = [x.detach().expand(everything.shape[0], -1, -1) for x in self.inputs]
            last = normed.detach().expand(everything.shape[0], -1, -1)
            self.values = target_values(rep, everything, logit_tokens, one_row, last)
        self.element = torch.finfo(tc.dtype).bits // 8
        self.by_layer = [(rep.active.layer == layer).nonzero()[:, 0] for layer in range(len(self.outputs))]

    def row_bytes(self, n_pos: int, n_sources: int) -> int:
        """Peak memory of one target: the backward's activations, the gradient of every source
        site (MLP outputs and embedding), their output gradients and the target's row of effects."""
        model = self.rep.model
        n_layers, d_model = model.architecture.n_layers, model.architecture.d_model
        sites = (n_layers + 1) * n_pos * d_model
        return 2 * bytes_per_row(model, n_pos, 1, n_pos) + (3 * sites + 2 * n_sources) * self.element

    def gradients(
        self, targets: Int[Tensor, " batch"]
    ) -> tuple[Float[Tensor, "batch pos d_model"], list[Float[Tensor, "batch pos d_model"] | None]]:
        """Each target's gradient on the embedding and on every MLP output (``None``: zero, for
        the MLP outputs at or after the deepest target's layer)."""
        tc, active = self.rep.transcoders, self.rep.active
        n_features, batch = len(active), targets.shape[0]
        rows = torch.arange(batch, device=targets.device)
        outputs, grads = [], []
        is_feature = targets < n_features
        features, feature_rows = targets[is_feature], rows[is_feature]
        for layer in active.layer[features].unique().tolist():
            chosen = active.layer[features] == layer
            feature = features[chosen]
            site = self.inputs[layer]  # on its block's device (device_map)
            grad = torch.zeros((batch, *site.shape), dtype=site.dtype, device=site.device)
            encoders = tc.W_enc[layer][active.index[feature]].to(site.device, site.dtype)
            grad[feature_rows[chosen].to(site.device), 0, active.pos[feature].to(site.device)] = encoders
            outputs.append(site)
            grads.append(grad)
        if (~is_feature).any():
            device = self.last.device
            grad = torch.zeros((batch, *self.last.shape), dtype=self.last.dtype, device=device)
            directions = self.logit_directions[(targets[~is_feature] - n_features).to(device)]
            grad[rows[~is_feature].to(device), 0] = directions.to(grad.dtype)
            outputs.append(self.last)
            grads.append(grad)
        found = torch.autograd.grad(
            outputs,
            [self.embedding, *self.outputs],
            grads,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        g_embed = (
            found[0][:, 0] if found[0] is not None else torch.zeros_like(self.embedding).expand(batch, -1, -1)
        )
        device = targets.device
        return g_embed.to(device), [None if g is None else g[:, 0].to(device) for g in found[1:]]

    def direct_effects(self, targets: Int[Tensor, " batch"]) -> Float[Tensor, "batch source"]:
        """The direct effect of every source on each target ``[B, n_sources]`` (sources:
        features, errors by layer then position, tokens)."""
        rep, tc, active = self.rep, self.rep.transcoders, self.rep.active
        g_embed, g_out = self.gradients(targets)
        batch, reached = targets.shape[0], sum(g is not None for g in g_out)
        with torch.no_grad():
            # position-major gradients [pos, batch, layer, d_model]: each source layer reads a slice in place
            by_position = (
                torch.stack(g_out[:reached], dim=2).transpose(0, 1).contiguous() if reached else None
            )
            parts = []
            for source, chosen in enumerate(self.by_layer):
                n_out = min(tc.output_layers(source).stop, reached) - source
                if n_out <= 0:
                    parts.append(torch.zeros(batch, chosen.shape[0], device=targets.device))
                    continue
                reads = by_position[:, :, source : source + n_out]
                effect = _decoder_products(reads, tc.W_dec[source], active, chosen)
                parts.append(effect * active.value[chosen].float())
            for g, error in zip(g_out, rep.errors, strict=True):
                zero = torch.zeros(batch, rep.n_pos, device=targets.device)
                parts.append(zero if g is None else (g * error.to(g.device)).sum(-1).float())
            parts.append((g_embed * rep.embedding.to(g_embed.device)).sum(-1).float())
            return torch.cat(parts, dim=1)


def _decoder_products(
    reads: Float[Tensor, "pos batch layer d_model"],
    W_dec: Float[Tensor, "d_sae _layer d_model"],
    active: ActiveFeatures,
    chosen: Int[Tensor, " feature"],
    max_elements: int = 1 << 25,
) -> Float[Tensor, "batch feature"]:
    """``sum_o reads[pos_f, b, o] . W_dec[index_f, o]`` for each chosen feature ``f`` (ordered by
    position): the gradient on every MLP output its decoders write, dotted with those decoders.

    One batched matrix product per group of positions, ``[batch, layer * d_model] @ [layer *
    d_model, slots]`` at each position, where the slots hold the decoders of the features active
    there (zero-padded to the group's busiest position; positions are grouped busiest first, so
    padding stays small). The gradients are read in place, never gathered per feature."""
    n_pos, batch, n_out, d_model = reads.shape
    width = n_out * d_model
    if chosen.shape[0] == 0:
        return reads.new_zeros(batch, 0, dtype=torch.float32)
    grads = reads.reshape(n_pos, batch, width)
    positions, indices = active.pos[chosen], active.index[chosen]
    counts = torch.bincount(positions, minlength=n_pos)
    rank = torch.arange(chosen.shape[0], device=chosen.device) - (counts.cumsum(0) - counts)[positions]
    slots_needed = int(counts.max())
    in_place = n_pos * slots_needed <= 2 * chosen.shape[0]
    if in_place:  # balanced (TopK): one group of every position, the gradients read in place
        groups = [torch.arange(n_pos, device=chosen.device)]
    else:  # busiest positions first, each group padded to its own busiest
        busiest_first = counts.argsort(descending=True)
        step = max(1, max_elements // (width * (batch + slots_needed)))
        groups = list(busiest_first.split(step))
    out = reads.new_zeros(batch, chosen.shape[0], dtype=torch.float32)
    row_of = torch.full((n_pos,), -1, dtype=torch.long, device=chosen.device)
    for group in groups:
        slots = int(counts[group].max())
        if slots == 0:
            break
        row_of[group] = torch.arange(group.shape[0], device=group.device)
        features = (row_of[positions] >= 0).nonzero()[:, 0]
        row, slot = row_of[positions[features]], rank[features]
        decoders = reads.new_zeros(group.shape[0], slots, width)
        decoders[row, slot] = W_dec[indices[features], :n_out].reshape(-1, width).to(reads.dtype)
        at = grads if in_place else grads[group]
        products = torch.bmm(at, decoders.transpose(1, 2))  # [group, batch, slots]
        out[:, features] = products[row, :, slot].T.float()
        row_of[group] = -1
    return out


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
        site = inputs[layer]  # on its block's device (device_map)
        x = site[row.to(site.device), active.pos[feature].to(site.device)].to(tc.device, tc.dtype)
        index = active.index[feature]
        pre = (x * tc.W_enc[layer][index]).sum(-1) + tc.b_enc[layer][index]
        values = values.index_put((row,), pre.float())
    if (~is_feature).any():
        logit = model.unembed.uncapped(normed[rows[~is_feature].to(normed.device), -1]).float()
        token = logit_tokens[targets[~is_feature] - n_features].to(logit.device)
        centred = (logit.gather(1, token[:, None])[:, 0] - logit.mean(-1)).to(values.device)
        values = values.index_put((rows[~is_feature],), centred)
    return values
