"""Attribution graphs (``circuits.tracing``): the replacement model is exact, edges are direct
effects (against a slow, literal autograd reference), interventions match the graph's linear
prediction, a planted feature is found, pruning and the export follow their definitions."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from test_circuits_export_readers import _cantor_decode, _check_types

import mechinterp
from circuits.tracing import (
    Replacement,
    Transcoder,
    head_split,
    head_splits,
    intervene,
    prune_graph,
    qk_split,
    random_transcoders,
    to_attribution_dict,
    trace,
    write_attribution_graph,
)
from circuits.tracing.replacement import ActiveFeatures, apply_values
from circuits.tracing.trace import _decoder_products
from mechinterp.models.tiny import tiny_hf_model

PROMPT = "cab ca"
REL = 1e-4


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL) -> bool:
    actual, expected = actual.detach(), expected.detach()
    return float((actual - expected).abs().max()) <= rel * max(float(expected.abs().max()), 1.0)


@pytest.fixture(scope="module")
def gpt2():
    hf_model, tokenizer = tiny_hf_model("gpt2")
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="module")
def llama_graph(tiny_llama):
    tc = random_transcoders(tiny_llama, 16, kind="clt", input_site="mlp_normalized", seed=1)
    return tiny_llama, tc, trace(tiny_llama, tc, PROMPT, progress=False, batch_size=64)


# ---------------------------------------------------------------- the replacement model


def test_replacement_reproduces_the_logits_on_every_family(tiny_pair):
    model, _ = tiny_pair
    tokens = model.to_tokens(PROMPT)
    expected = model(tokens)[0]
    rep = Replacement(model, random_transcoders(model, 16, kind="clt", input_site="mlp_normalized"), tokens)
    assert len(rep.active) > 0
    assert _close(rep.logits(), expected)
    # without the error nodes the transcoders alone give other logits (the errors matter)
    with torch.no_grad():
        _, normed = rep.run([out[None] for out in rep.mlp_outputs(errors=False)])
    assert not _close(model.unembed(normed)[0], expected)


def test_node_values_are_incoming_edges_plus_bias(llama_graph):
    model, tc, graph = llama_graph
    rep = Replacement(model, tc, model.to_tokens(PROMPT))
    incoming = torch.sparse.sum(graph.edges, 1).to_dense()
    # the bias: the frozen replacement with every source (features, errors, embedding) at zero
    zero_sources = [tc.b_dec[layer].expand(1, rep.n_pos, -1) for layer in range(tc.n_layers)]
    with torch.no_grad():
        inputs, normed = rep.run(zero_sources, embedding=torch.zeros_like(rep.embedding)[None])
        bias = torch.stack(
            [
                inputs[layer][0, pos] @ tc.W_enc[layer][index] + tc.b_enc[layer][index]
                for layer, pos, index in graph.features.tolist()
            ]
        )
        uncapped = model.unembed.uncapped(normed[0, -1])
    logit_bias = uncapped[graph.logit_tokens] - uncapped.mean()
    features, logits = slice(0, graph.n_features), slice(graph.logit_node(0), None)
    assert _close(incoming[features] + bias, graph.values[features])
    assert _close(incoming[logits] + logit_bias, graph.values[logits])
    # the values are the real pre-activations and centred logits of the prompt
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(PROMPT))
    layer, pos, index = graph.features[0].tolist()
    x = model.blocks[layer].ln2(cache[f"blocks.{layer}.hook_mlp_in"][0, pos])
    assert _close(graph.values[0], x @ tc.W_enc[layer][index] + tc.b_enc[layer][index])
    assert graph.logit_probabilities.sum() >= 0.95 or graph.n_logits == 10
    # direct effects respect causality: no edge from a later position or a later layer's feature
    targets, sources = graph.edges.indices()
    feature_edges = (targets < graph.n_features) & (sources < graph.n_features)
    t, s = graph.features[targets[feature_edges]], graph.features[sources[feature_edges]]
    assert bool((s[:, 0] < t[:, 0]).all() and (s[:, 1] <= t[:, 1]).all())


def _reference_edge(model, tc: Transcoder, tokens: torch.Tensor, target, source) -> float:
    """The direct effect of ``source`` on ``target`` by autograd through a literal frozen
    replacement: cached patterns and scales, MLP outputs fixed at their values on the prompt,
    one source scaled by ``alpha`` (edge = d target / d alpha at alpha = 1)."""
    n_layers = model.architecture.n_layers
    frozen = [n for n in model.hook_dict if n.endswith(("hook_pattern", "hook_scale"))]
    mlp = [f"blocks.{layer}.hook_mlp_{w}" for layer in range(n_layers) for w in ("in", "out")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[*frozen, *mlp, "blocks.0.hook_resid_pre"])
    acts = [tc.encode(layer, cache[f"blocks.{layer}.hook_mlp_in"]) for layer in range(n_layers)]
    alpha = torch.ones((), requires_grad=True)
    shift = {}  # hook name -> what scaling the source by alpha adds there
    kind, place = source
    if kind == "token":
        delta = torch.zeros_like(cache["blocks.0.hook_resid_pre"])
        delta[0, place] = cache["blocks.0.hook_resid_pre"][0, place]
        shift["blocks.0.hook_resid_pre"] = delta
    elif kind == "error":
        layer, pos = place
        name = f"blocks.{layer}.hook_mlp_out"
        delta = torch.zeros_like(cache[name])
        delta[0, pos] = cache[name][0, pos] - tc.decode(layer, acts)[0, pos]
        shift[name] = delta
    else:
        layer, pos, index = place
        for out_layer in range(layer, n_layers):
            if out_layer in tc.output_layers(layer):
                name = f"blocks.{out_layer}.hook_mlp_out"
                delta = torch.zeros_like(cache[name])
                delta[0, pos] = acts[layer][0, pos, index] * tc.W_dec[layer][index, out_layer - layer]
                shift[name] = delta
    hooks = [(n, lambda x, hook: cache[hook.name]) for n in frozen]
    fixed = [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)] + ["blocks.0.hook_resid_pre"]
    for name in fixed:
        hooks.append((name, lambda x, hook: cache[hook.name] + (alpha - 1) * shift.get(hook.name, 0)))
    seen = {}
    hooks += [
        (f"blocks.{layer}.hook_mlp_in", lambda x, hook: seen.__setitem__(hook.name, x))
        for layer in range(n_layers)
    ]
    with model.hooks(fwd_hooks=hooks):
        final = model.ln_final(model(tokens, stop_at_layer=n_layers))
    kind, place = target
    if kind == "feature":
        layer, pos, index = place
        value = seen[f"blocks.{layer}.hook_mlp_in"][0, pos] @ tc.W_enc[layer][index] + tc.b_enc[layer][index]
    else:
        logits = final[0, -1] @ model.unembed.W_U + model.unembed.b_U
        value = logits[place] - logits.mean()
    (grad,) = torch.autograd.grad(value, alpha)
    return float(grad)


def test_edges_equal_a_slow_autograd_reference(gpt2):
    tc = random_transcoders(gpt2, 12, kind="clt", seed=2)  # LayerNorm, learned positions, CLT
    tokens = gpt2.to_tokens(PROMPT)
    graph = trace(gpt2, tc, tokens, progress=False, batch_size=32)  # several backward batches
    assert graph.info["chunks"] > 1
    dense = graph.dense()

    def described(node: int):
        kind = graph.kind(node)
        if kind == "feature":
            return "feature", tuple(graph.features[node].tolist())
        if kind == "error":
            return "error", divmod(node - graph.n_features, graph.n_pos)
        if kind == "token":
            return "token", node - graph.token_node(0)
        return "logit", int(graph.logit_tokens[node - graph.logit_node(0)])

    generator = torch.Generator().manual_seed(0)
    targets, sources = graph.edges.indices()
    picks = torch.randint(len(targets), (6,), generator=generator).tolist()
    pairs = [(int(targets[i]), int(sources[i])) for i in picks]
    last_feature = graph.n_features - 1
    pairs += [
        (graph.logit_node(0), graph.token_node(1)),
        (graph.logit_node(0), graph.error_node(1, graph.n_pos - 1)),
        (last_feature, graph.token_node(graph.n_pos - 1)),  # may be zero: a check of zeros too
    ]
    for target, source in pairs:
        expected = _reference_edge(gpt2, tc, tokens, described(target), described(source))
        assert float(dense[target, source]) == pytest.approx(expected, rel=1e-4, abs=1e-5), (target, source)


def test_decoder_products_equal_a_loop_over_features_when_positions_are_uneven():
    """The padded per-position products (grouped busiest-first when positions are uneven) equal
    one dot product per feature."""
    generator = torch.Generator().manual_seed(0)
    n_pos, batch, n_out, d_model, d_tc = 7, 3, 2, 5, 11
    reads = torch.randn(n_pos, batch, n_out, d_model, generator=generator)
    W_dec = torch.randn(d_tc, n_out + 1, d_model, generator=generator)
    counts = [6, 0, 1, 2, 1, 3, 1]  # uneven: padding to 6 everywhere would waste most of it
    pos = torch.tensor([p for p, c in enumerate(counts) for _ in range(c)])
    index = torch.cat([torch.randperm(d_tc, generator=generator)[:c] for c in counts])
    active = ActiveFeatures(torch.zeros_like(pos), pos, index, torch.ones(len(pos)))
    chosen = torch.arange(len(pos))
    expected = torch.stack(
        [
            (reads[p] * W_dec[i, :n_out]).sum((-1, -2))
            for p, i in zip(pos.tolist(), index.tolist(), strict=True)
        ],
        dim=1,
    )
    for max_elements in (1 << 20, 1):  # one group per position at the smallest budget
        assert torch.allclose(
            _decoder_products(reads, W_dec, active, chosen, max_elements), expected, atol=1e-5
        )


def test_max_feature_nodes_traces_the_most_influential_features_exactly(tiny_llama):
    tc = random_transcoders(tiny_llama, 16, kind="clt", input_site="mlp_normalized", seed=1)
    full = trace(tiny_llama, tc, PROMPT, progress=False, batch_size=64)
    limit = full.n_features // 3
    partial = trace(tiny_llama, tc, PROMPT, progress=False, batch_size=4, max_feature_nodes=limit)
    assert int(partial.traced.sum()) == limit and bool(full.traced.all())
    dense_full, dense_partial = full.dense(), partial.dense()
    traced = partial.traced.nonzero()[:, 0]
    # a traced feature's incoming edges and every logit's are the full graph's; the rest have none
    assert torch.allclose(dense_partial[traced], dense_full[traced], atol=1e-6)
    logits = slice(full.logit_node(0), None)
    assert torch.allclose(dense_partial[logits], dense_full[logits], atol=1e-6)
    assert dense_partial[: full.n_features][~partial.traced].abs().sum() == 0
    assert torch.equal(partial.values, full.values)
    # the first round (4 batches of 4) takes the features with most influence through the logits' edges
    weights = dense_full[logits].abs()
    weights = weights / weights.sum(1, keepdim=True)
    first = (full.logit_probabilities @ weights)[: full.n_features]
    assert bool(partial.traced[first.topk(min(limit, 16)).indices].all())


# ---------------------------------------------------------------- interventions


def test_zeroing_a_top_feature_changes_the_logits_as_the_graph_predicts(llama_graph):
    model, tc, graph = llama_graph
    sources, weights = graph.incoming(graph.logit_node(0))
    is_feature = sources < graph.n_features
    top = int(sources[is_feature][weights[is_feature].abs().argmax()])
    feature = tuple(graph.features[top].tolist())
    frozen = intervene(model, tc, PROMPT, {feature: 0.0}, frozen=True)
    predicted = graph.predicted_change({feature: 0.0})[graph.logit_node(0) :]
    assert _close(frozen.change[graph.logit_tokens], predicted)
    assert float(predicted.abs().max()) > 1e-3
    doubled = intervene(model, tc, PROMPT, {feature: 2 * float(graph.activations[top])}, frozen=True)
    assert _close(doubled.change[graph.logit_tokens], -predicted)  # linear in the change
    # the real model: without changes it is the model; with them it moves (the graph approximates it)
    expected = model(model.to_tokens(PROMPT))[0, -1]
    assert _close(intervene(model, tc, PROMPT, {}, frozen=False).logits, expected)
    real = intervene(model, tc, PROMPT, {feature: 0.0}, frozen=False)
    assert _close(real.clean_logits, expected) and not _close(real.logits, expected, rel=1e-6)


def test_a_planted_copy_feature_carries_the_strongest_path():
    """Layer 0's MLP gets a neuron that copies token "a" to its logit; a transcoder feature
    reproduces that neuron; the graph's strongest path to the logit runs token -> feature -> logit."""
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    answer = model.to_single_token("a")
    block = model.blocks[0]
    with torch.no_grad():
        block.attn.W_O.zero_()  # layer 0's attention writes nothing: its MLP reads the embedding
        block.attn.b_O.zero_()
        read = block.ln2(model.embed.W_E[answer])
        direction = read / read.norm()
        block.mlp.W_gate[:, 0] = block.mlp.W_in[:, 0] = 3 * direction / read.norm()
        unembedding = model.unembed.W_U[:, answer]
        block.mlp.W_out[0] = 30 * unembedding / unembedding.norm()
        _, cache = model.run_with_cache(model.to_tokens("bca"))
    neuron = cache["blocks.0.mlp.hook_post"][0, -1, 0]
    tc = random_transcoders(model, 8, input_site="mlp_normalized", seed=3)
    with torch.no_grad():  # feature 0 of layer 0 is that neuron: it reads "a" and writes its output
        tc.W_enc[0][0] = direction
        tc.b_enc[0][0] = -0.5 * read.norm()
        tc.W_dec[0][0, 0] = neuron * block.mlp.W_out[0] / (0.5 * read.norm())
    graph = trace(model, tc, "bca", progress=False)
    assert _close(Replacement(model, tc, model.to_tokens("bca")).logits(), model(model.to_tokens("bca"))[0])
    last = graph.n_pos - 1
    planted = graph.feature_node(0, last, 0)
    assert int(graph.logit_tokens[0]) == answer
    sources, weights = graph.incoming(graph.logit_node(0))
    assert int(sources[weights.abs().argmax()]) == planted
    sources, weights = graph.incoming(planted)
    assert int(sources[weights.abs().argmax()]) == graph.token_node(last)
    pruned = prune_graph(graph)
    assert (
        bool(pruned.node_mask[planted])
        and pruned.node_influence[planted] == pruned.node_influence[: graph.n_features].max()
    )


# ---------------------------------------------------------------- attention explained


def _literal_head_effects(rep: Replacement, target, on, off, layer: int):
    """Through the frozen replacement, literally: the target with the source on (``on``: MLP
    outputs and embedding of the prompt) and off; per head of ``layer``, what the target loses
    when only that head's ``z`` is reset to its source-off value; and the effect that bypasses the
    layer (every head's ``z`` reset). Returns ``(total, per_head, bypass)``."""
    model, tc = rep.model, rep.transcoders
    name = f"blocks.{layer}.attn.hook_z"
    kind, place = target
    stored = {}

    def value(inputs, heads=None):
        hooks = [(name, lambda z, hook: stored.__setitem__("z", z.clone()))]
        if heads is not None:

            def reset(z, hook):
                z = z.clone()
                z[:, :, heads] = stored["off"][:, :, heads]
                return z

            hooks = [(name, reset)]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            recorded, normed = rep.run(inputs[0], embedding=inputs[1])
        if kind == "feature":
            at, pos, index = place
            return float(recorded[at][0, pos] @ tc.W_enc[at][index] + tc.b_enc[at][index])
        logits = model.unembed.uncapped(normed[0, -1]).detach()
        return float(logits[place] - logits.mean())

    off_value = value(off)
    stored["off"] = stored["z"]
    total = value(on) - off_value
    n_heads = model.architecture.n_heads
    per_head = torch.tensor([total - (value(on, [h]) - off_value) for h in range(n_heads)])
    bypass = value(on, list(range(n_heads))) - off_value
    return total, per_head, bypass


def test_head_split_adds_up_to_each_edge_and_matches_literal_head_resets(llama_graph):
    model, tc, graph = llama_graph
    rep = Replacement(model, tc, graph.tokens[None])
    prompt = ([out[None] for out in rep.mlp_outputs()], rep.embedding[None])
    sources, _ = graph.incoming(graph.logit_node(0))
    features = sources[sources < graph.n_features]
    feature = int(features[graph.features[features, 0] == 0][0])  # a layer-0 feature: both layers after it
    zeroed = apply_values(rep.active, {tuple(graph.features[feature].tolist()): 0.0})
    without_feature = [out[None] for out in rep.mlp_outputs(zeroed)]
    without_token = rep.embedding.clone()
    without_token[1] = 0
    logit = ("logit", int(graph.logit_tokens[0]))
    late = int((graph.features[:, 0] == 1).nonzero()[-1, 0])  # a layer-1 feature at a later position
    cases = [  # (target, source, the target for the literal check, source-off inputs, layer checked)
        (graph.logit_node(0), feature, logit, (without_feature, prompt[1]), 1),
        (graph.logit_node(0), graph.token_node(1), logit, (prompt[0], without_token[None]), 0),
        (late, graph.token_node(1), ("feature", tuple(graph.features[late].tolist())), None, None),
    ]
    splits = head_splits(rep, graph, [case[:2] for case in cases], batch_size=2)
    dense = graph.dense()
    for split, (target, source, described, off, at) in zip(splits, cases, strict=True):
        assert split.weight == float(dense[target, source]) and split.weight != 0
        assert torch.allclose(split.heads.sum(1) + split.remainder, torch.full((2,), split.weight), atol=1e-4)
        if at is not None:
            total, per_head, bypass = _literal_head_effects(rep, described, prompt, off, at)
            assert total == pytest.approx(split.weight, rel=1e-4, abs=1e-5)
            assert torch.allclose(split.heads[at], per_head, atol=1e-4), (at, split.heads[at], per_head)
            assert split.remainder[at] == pytest.approx(bypass, rel=1e-3, abs=1e-4)
    # many edges at once: every row of every split adds up to its edge
    targets, sources = graph.edges.indices()
    pairs = list(zip(targets[::50].tolist(), sources[::50].tolist(), strict=True))
    for split in head_splits(rep, graph, pairs):
        assert torch.allclose(split.heads.sum(1) + split.remainder, torch.tensor(split.weight), atol=1e-4)


def test_a_planted_head_carries_every_cross_position_edge():
    """Only head 1 of layer 0 writes (every other W_O is zero): an edge from the first token to the
    logit crosses positions through that head alone, so it gets the whole weight."""
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            keep = block.attn.W_O[1].clone()
            block.attn.W_O.zero_()
            if layer == 0:
                block.attn.W_O[1] = 3 * keep
    tc = random_transcoders(model, 16, kind="clt", seed=5)
    graph = trace(model, tc, PROMPT, progress=False)
    rep = Replacement(model, tc, graph.tokens[None])
    split = head_split(rep, graph, graph.logit_node(0), graph.token_node(0))
    assert abs(split.weight) > 1e-3
    assert split.heads[0, 1] == pytest.approx(split.weight, rel=1e-4)
    assert float(split.heads.abs().sum()) == pytest.approx(abs(split.weight), rel=1e-4)
    assert abs(float(split.remainder[0])) < 1e-5 and split.remainder[1] == pytest.approx(
        split.weight, rel=1e-4
    )
    assert split.top(3) == [(0, 1, float(split.heads[0, 1]))]


def test_qk_split_adds_up_to_the_models_attention_score(llama_graph):
    model, tc, graph = llama_graph
    rep = Replacement(model, tc, graph.tokens[None])
    _, cache = model.run_with_cache(graph.tokens[None])
    last = graph.n_pos - 1
    for layer, head, key in [(1, 2, 1), (0, 0, last)]:
        qk = qk_split(rep, graph, layer=layer, head=head, query_pos=last, key_pos=key)
        expected = float(cache[f"blocks.{layer}.attn.hook_attn_scores"][0, head, last, key])
        assert qk.score == pytest.approx(expected, rel=1e-4)
        parts = float(qk.pairs.sum() + qk.query_bias.sum() + qk.key_bias.sum()) + qk.bias
        assert parts == pytest.approx(qk.score, rel=1e-4, abs=1e-5)
        kinds = {graph.kind(int(n)) for n in qk.nodes}
        assert kinds == ({"token"} if layer == 0 else {"feature", "error", "token"})
        positions = torch.tensor([_node_pos(graph, int(n)) for n in qk.nodes])
        assert bool((qk.key_totals[positions > key] == 0).all())  # causal: later nodes do not reach the key
        assert float(qk.query_totals.abs().max()) > 0
    with pytest.raises(ValueError, match="key_pos <= query_pos"):
        qk_split(rep, graph, layer=0, head=0, query_pos=1, key_pos=2)


def _node_pos(graph, node: int) -> int:
    kind = graph.kind(node)
    if kind == "feature":
        return int(graph.features[node, 1])
    if kind == "error":
        return (node - graph.n_features) % graph.n_pos
    return node - graph.token_node(0)


# ---------------------------------------------------------------- pruning and scores


def test_influence_equals_the_dense_inverse_and_pruning_keeps_its_invariants(llama_graph):
    _, _, graph = llama_graph
    pruned = prune_graph(graph)
    normalized = graph.dense().abs()
    normalized = normalized / normalized.sum(1, keepdim=True).clamp(min=1e-10)
    weights = torch.zeros(graph.n_nodes)
    weights[graph.logit_node(0) :] = graph.logit_probabilities
    eye = torch.eye(graph.n_nodes)
    expected = weights @ (torch.linalg.inv(eye - normalized.double()).float() - eye)
    assert torch.allclose(pruned.node_influence, expected, atol=1e-5)
    assert pruned.node_mask[graph.token_node(0) :].all()
    targets, sources = graph.edges.indices()
    kept = pruned.edge_mask
    assert pruned.node_mask[targets[kept]].all() and pruned.node_mask[sources[kept]].all()
    assert 0 < int(kept.sum()) < kept.shape[0]
    # random transcoders leave large errors, which take most of the influence; looser thresholds keep features
    loose = prune_graph(graph, node_threshold=0.99, edge_threshold=0.999)
    assert int(loose.node_mask[: graph.n_features].sum()) > int(pruned.node_mask[: graph.n_features].sum())
    assert 0 <= pruned.replacement_score <= 1 and 0 <= pruned.completeness_score <= 1
    # without error nodes' influence (errors zeroed) both scores would be 1; here errors carry some
    errors = slice(graph.n_features, graph.token_node(0))
    assert pruned.node_influence[errors].sum() > 0 and pruned.replacement_score < 1


# ---------------------------------------------------------------- export


def test_export_follows_the_neuronpedia_reader_rules(llama_graph, tmp_path):
    model, tc, graph = llama_graph
    pruned = prune_graph(graph)
    path = write_attribution_graph(pruned, tmp_path / "graph.json", scan="tiny-llama", slug="cab.1")
    assert path.stat().st_size >= 1024  # Neuronpedia's upload refuses smaller files
    data = json.loads(path.read_text())
    meta = data["metadata"]
    _check_types(
        meta, {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list, "prompt": str}
    )
    assert meta["schema_version"] == 1 and meta["node_threshold"] == 0.8
    assert meta["prompt_tokens"] == model.to_str_tokens(PROMPT)
    _check_types(
        data["qParams"],
        {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str, "sg_pos": str},
    )
    types = {
        "node_id": str,
        "feature": int,
        "layer": str,
        "ctx_idx": int,
        "feature_type": str,
        "jsNodeId": str,
    }
    ids = set()
    for node in data["nodes"]:
        _check_types(node, types | {"clerp": str, "influence": float})
        ids.add(node["node_id"])
        if node["feature_type"] in ("cross layer transcoder", "mlp reconstruction error"):
            layer, index, pos = map(int, node["node_id"].split("_"))
            assert _cantor_decode(node["feature"]) == (layer, index) and node["layer"] == str(layer)
            assert node["ctx_idx"] == pos
        if node["feature_type"] == "embedding":
            assert node["node_id"] == f"E_{int(graph.tokens[node['ctx_idx']])}_{node['ctx_idx']}"
        if node["feature_type"] == "logit":
            shown = float(node["clerp"].split("(p=")[1].split(")")[0])
            assert re.fullmatch(r'Output ".*" \(p=\d\.\d{3}\)', node["clerp"])
            assert shown == round(node["token_prob"], 3) and node["layer"] == str(graph.n_layers + 1)
    assert len(ids) == len(data["nodes"])  # unique ids
    merged = [f"{n['layer']}_{n['feature']}_{n['ctx_idx']}" for n in data["nodes"]]
    assert len(set(merged)) == len(merged)  # the viewers merge equal layer_feature_ctx
    assert (
        max(int(n["layer"]) for n in data["nodes"] if n["layer"] != "E" and n["feature_type"] != "logit") > 0
    )
    assert data["links"] and all({link["source"], link["target"]} <= ids for link in data["links"])
    assert all(math.isfinite(link["weight"]) for link in data["links"])
    assert sum(n["is_target_logit"] for n in data["nodes"] if n["feature_type"] == "logit") == 1
    with pytest.raises(ValueError, match="not a valid Neuronpedia name"):
        to_attribution_dict(pruned, slug="a/b")
    # with the replacement, each link also lists the heads that carry it (an extra field)
    rep = Replacement(model, tc, graph.tokens[None])
    with_heads = to_attribution_dict(pruned, slug="cab.2", replacement=rep)
    assert [{k: link[k] for k in ("source", "target", "weight")} for link in with_heads["links"]] == data[
        "links"
    ]
    shares = [link["mechinterp_heads"] for link in with_heads["links"]]
    assert any(shares) and all(len(heads) <= 5 for heads in shares)
    for heads in shares:
        assert all(
            0 <= layer < graph.n_layers and 0 <= head < model.architecture.n_heads for layer, head, _ in heads
        )
        assert [abs(w) for _, _, w in heads] == sorted((abs(w) for _, _, w in heads), reverse=True)
    assert "head_split" in with_heads["metadata"]["mechinterp"]
