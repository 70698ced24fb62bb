"""The circuit graph and batched edge patching."""

from __future__ import annotations

import sys

import pytest
import torch

import mechinterp
from circuits import Edge, Graph, Node, patch_edges, reference_patch_edges
from mechinterp.metrics import LogitDifference
from mechinterp.models.tiny import tiny_hf_model


@pytest.fixture(
    scope="module",
    params=[("gpt2", None), ("llama", 2), ("gpt_neox", None)],
    ids=["gpt2", "llama-gqa", "gpt_neox-parallel"],
)
def model(request):
    family, kv = request.param
    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=kv)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


def inputs():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(3, 98, (2, 6), generator=generator)
    corrupt = torch.randint(3, 98, (2, 6), generator=generator)
    metric = LogitDifference.last_position(
        torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8], reduce="none"
    )
    return clean, corrupt, metric


def test_graph_structure(model):
    graph = Graph.from_model(model)
    arch = model.architecture
    heads, kv = arch.n_heads, arch.kv_heads
    sources_before_layer_1 = 1 + heads + 1
    assert (
        len([e for e in graph.edges if e.target == Node("head", 1, 0) and e.channel == "q"])
        == sources_before_layer_1
    )
    assert len(graph.edges_into(Node("logits"), "logits")) == 1 + 2 * (heads + 1)
    parallel = arch.parallel_attn_mlp
    same_layer = Edge(Node("head", 0, 1), Node("mlp", 0), "mlp")
    assert (same_layer in graph.edge_index) == (not parallel)
    assert not any(e.channel in ("k", "v") and e.target.head >= kv for e in graph.edges)
    assert Edge(Node("head", 0, 1), Node("mlp", 1), "mlp").name == "a0.h1->m1"
    assert Edge(Node("input"), Node("head", 0, 0), "q").name == "input->a0.h0<q>"


def test_all_edges_is_the_corrupted_run_and_none_the_clean_run(model):
    clean, corrupt, metric = inputs()
    graph = Graph.from_model(model)
    masks = torch.stack([torch.ones(len(graph.edges)), torch.zeros(len(graph.edges))])
    values = patch_edges(model, clean, corrupt, graph, masks, metric)
    with torch.no_grad():
        torch.testing.assert_close(values[0], metric(model(corrupt)), atol=1e-5, rtol=0)
        torch.testing.assert_close(values[1], metric(model(clean)), atol=1e-5, rtol=0)


def test_batched_rows_equal_the_reference_on_random_edge_sets(model):
    clean, corrupt, metric = inputs()
    graph = Graph.from_model(model)
    generator = torch.Generator().manual_seed(1)
    masks = (torch.rand(4, len(graph.edges), generator=generator) > 0.5).float()
    values = patch_edges(model, clean, corrupt, graph, masks, metric)
    for row in range(4):
        reference = reference_patch_edges(model, clean, corrupt, graph, masks[row], metric)
        torch.testing.assert_close(values[row], reference, atol=1e-5, rtol=0)
    assert (values[0] - values[1]).abs().max() > 1e-3  # different circuits, different numbers


def test_bad_masks_and_foreign_graphs(model):
    clean, corrupt, metric = inputs()
    graph = Graph.from_model(model)
    with pytest.raises(ValueError, match=rf"masks must be \[row, {len(graph.edges)}\]"):
        patch_edges(model, clean, corrupt, graph, torch.ones(2, 3), metric)
    hf_model, tokenizer = tiny_hf_model("gpt2", n_layers=3)
    other = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    foreign = Graph.from_model(other)
    with pytest.raises(ValueError, match=r"graph of 'gpt2' \(3 layers, 4 heads\) does not fit"):
        patch_edges(model, clean, corrupt, foreign, torch.ones(1, len(foreign.edges)), metric)


def test_eap_is_exact_edge_patching_for_edges_into_the_logits(model):
    """The logit difference is linear in the final residual stream once the final norm's
    scale is frozen, so EAP's score of an edge into the logits equals patching that edge."""
    from circuits import eap_scores

    clean, corrupt, metric = inputs()
    graph = Graph.from_model(model)
    _, cache = model.run_with_cache(clean)
    scale = cache["ln_final.hook_scale"]

    at_answers = scale[torch.arange(clean.shape[0]), metric.positions][:, None]  # logits are read there only

    def frozen(value, hook):  # patch_edges stacks rows of the batch: repeat the clean scale
        return at_answers.repeat(value.shape[0] // at_answers.shape[0], 1, 1)

    with model.hooks(fwd_hooks=[("ln_final.hook_scale", frozen)]):
        scores = eap_scores(model, clean, corrupt, graph, metric)
        into_logits = graph.edges_into(Node("logits"), "logits")
        masks = torch.zeros(len(into_logits) + 1, len(graph.edges))
        for row, index in enumerate(into_logits):
            masks[row + 1, index] = 1
        values = patch_edges(model, clean, corrupt, graph, masks, metric)
    exact = (values[1:] - values[0]).sum(1)
    torch.testing.assert_close(scores[into_logits], exact, atol=1e-4, rtol=1e-4)
    assert scores.shape == (len(graph.edges),) and bool(scores.isfinite().all())


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_zero_and_mean_ablation_equal_the_reference(model, ablation):
    clean, corrupt, metric = inputs()
    graph = Graph.from_model(model)
    generator = torch.Generator().manual_seed(2)
    masks = (torch.rand(2, len(graph.edges), generator=generator) > 0.7).float()
    values = patch_edges(model, clean, corrupt, graph, masks, metric, ablation=ablation)
    for row in range(2):
        reference = reference_patch_edges(model, clean, corrupt, graph, masks[row], metric, ablation=ablation)
        torch.testing.assert_close(values[row], reference, atol=1e-5, rtol=0)


def test_rows_split_into_chunks_give_the_same_values(model):
    clean, corrupt, metric = inputs()
    graph = Graph.from_model(model)
    masks = (torch.rand(5, len(graph.edges), generator=torch.Generator().manual_seed(3)) > 0.5).float()
    together = patch_edges(model, clean, corrupt, graph, masks, metric)
    one_row_at_a_time = patch_edges(model, clean, corrupt, graph, masks, metric, max_memory=1)
    torch.testing.assert_close(together, one_row_at_a_time, atol=1e-5, rtol=0)


def test_padded_rows_equal_their_unpadded_runs(model):
    clean, corrupt, _ = inputs()
    graph = Graph.from_model(model)
    mask = torch.ones_like(clean)
    mask[1, :2] = 0  # example 1 is left-padded by two tokens
    metric = LogitDifference.last_position(mask, correct=[5, 6], incorrect=[7, 8], reduce="none")
    masks = (torch.rand(2, len(graph.edges), generator=torch.Generator().manual_seed(4)) > 0.5).float()
    padded = patch_edges(model, clean, corrupt, graph, masks, metric, attention_mask=mask)
    short = LogitDifference.last_position(torch.ones(1, 4), correct=[6], incorrect=[8], reduce="none")
    alone = patch_edges(model, clean[1:, 2:], corrupt[1:, 2:], graph, masks, short)
    torch.testing.assert_close(padded[:, 1], alone[:, 0], atol=1e-5, rtol=0)


def test_eap_ig_is_exact_for_edges_into_the_logits_and_differs_from_eap_elsewhere(model):
    """With the final norm's scale frozen the logits are linear in their input, so the
    gradient there is the same at every point between corrupt and clean."""
    from circuits import eap_ig_scores, eap_scores

    clean, corrupt, metric = inputs()
    graph = Graph.from_model(model)
    _, cache = model.run_with_cache(clean)
    # freeze a scale that is the same on every interpolation row: the clean one, at the answers
    at_answers = cache["ln_final.hook_scale"][torch.arange(clean.shape[0]), metric.positions][:, None]

    def frozen(value, hook):
        return at_answers.repeat(value.shape[0] // at_answers.shape[0], 1, 1)

    into_logits = graph.edges_into(Node("logits"), "logits")
    with model.hooks(fwd_hooks=[("ln_final.hook_scale", frozen)]):
        plain = eap_scores(model, clean, corrupt, graph, metric)
        integrated = eap_ig_scores(model, clean, corrupt, graph, metric, steps=3)
    torch.testing.assert_close(integrated[into_logits], plain[into_logits], atol=1e-4, rtol=1e-4)
    assert (integrated - plain).abs().max() > 1e-4  # earlier edges see the curvature
    with pytest.raises(ValueError, match="steps must be at least 1"):
        eap_ig_scores(model, clean, corrupt, graph, metric, steps=0)


def literal_pruning(graph: Graph, kept: list[Edge]) -> set[Edge]:
    """Walk node by node: a query head is fed by its q edges and its key/value head's k/v edges."""
    group = graph.n_heads // graph.n_kv_heads

    def feeds(edge: Edge, node: Node) -> bool:
        if edge.channel in ("k", "v"):
            return (
                node.kind == "head"
                and node.layer == edge.target.layer
                and node.head // group == edge.target.head
            )
        return edge.target == node

    reached = {Node("input")}
    for node in graph.nodes:
        if any(feeds(e, node) and e.source in reached for e in kept):
            reached.add(node)
    useful = {Node("logits")}
    for node in reversed(graph.nodes):
        if any(e.source == node and any(feeds(e, u) for u in useful) for e in kept):
            useful.add(node)
    return {e for e in kept if e.source in reached and any(feeds(e, u) for u in useful)}


def test_pruning_equals_a_literal_node_walk(model):
    from circuits import Circuit

    graph = Graph.from_model(model)
    sizes = []
    for seed in range(6):
        keep = torch.rand(len(graph.edges), generator=torch.Generator().manual_seed(seed)) > 0.8
        circuit = Circuit(graph, torch.zeros(len(graph.edges)), keep)
        pruned = circuit.pruned()
        assert set(pruned.edges_in_graph()) == literal_pruning(graph, circuit.edges_in_graph())
        sizes.append((pruned.n_edges, circuit.n_edges))
    assert any(0 < kept < total for kept, total in sizes)  # pruning did something


def test_a_shared_prefix_runs_once_and_changes_nothing(model):
    clean, corrupt, metric = inputs()
    graph = Graph.from_model(model)
    base = (torch.rand(len(graph.edges), generator=torch.Generator().manual_seed(5)) > 0.5).float()
    masks = base.repeat(3, 1)
    into_layer_1 = [i for i, e in enumerate(graph.edges) if e.target.layer == 1 or e.channel == "logits"]
    masks[1, into_layer_1[:4]] = 1 - masks[1, into_layer_1[:4]]
    masks[2, into_layer_1[-3:]] = 1 - masks[2, into_layer_1[-3:]]
    shared = patch_edges(model, clean, corrupt, graph, masks, metric, start_layer=1)
    torch.testing.assert_close(
        shared, patch_edges(model, clean, corrupt, graph, masks, metric), atol=1e-5, rtol=0
    )
    masks[2, graph.edges_into(Node("head", 0, 0), "q")[0]] += 1
    with pytest.raises(ValueError, match="rows differ on edges into blocks before it"):
        patch_edges(model, clean, corrupt, graph, masks, metric, start_layer=1)


def test_prompts_sharing_a_prefix_patch_only_after_it(model, monkeypatch):
    """Before the first differing token every patch is zero, so only later positions are
    buffered; the values still equal the reference, and EAP still sees every edge."""
    from circuits import eap_scores

    clean, corrupt, metric = inputs()
    corrupt = torch.cat([clean[:, :3], corrupt[:, 3:]], dim=1)  # the first 3 tokens agree
    graph = Graph.from_model(model)
    masks = (torch.rand(3, len(graph.edges), generator=torch.Generator().manual_seed(6)) > 0.5).float()
    values = patch_edges(model, clean, corrupt, graph, masks, metric)
    for row in range(3):
        reference = reference_patch_edges(model, clean, corrupt, graph, masks[row], metric)
        torch.testing.assert_close(values[row], reference, atol=1e-5, rtol=0)
    same = patch_edges(model, clean, clean, graph, masks, metric)  # nothing differs: nothing changes
    with torch.no_grad():
        torch.testing.assert_close(same, metric(model(clean))[None].expand(3, -1), atol=1e-5, rtol=0)
    skipping_the_prefix = eap_scores(model, clean, corrupt, graph, metric)
    monkeypatch.setattr(sys.modules["circuits.eap"], "first_difference", lambda *args: 0)
    every_position = eap_scores(model, clean, corrupt, graph, metric)
    torch.testing.assert_close(skipping_the_prefix, every_position, atol=1e-5, rtol=1e-5)
    assert bool(every_position.ne(0).any())


def literal_greedy(graph: Graph, scores: torch.Tensor, n: int) -> list[Edge]:
    """Each step: among edges into nodes already reached from the logits, take the largest |score|."""
    group = graph.n_heads // graph.n_kv_heads

    def fed_nodes(edge: Edge) -> list[Node]:
        if edge.channel in ("k", "v"):
            return [
                Node("head", edge.target.layer, h)
                for h in range(edge.target.head * group, (edge.target.head + 1) * group)
            ]
        return [edge.target]

    reached, chosen = {Node("logits")}, []
    while len(chosen) < n:
        frontier = [
            e for e in graph.edges if e not in chosen and any(node in reached for node in fed_nodes(e))
        ]
        if not frontier:
            break
        best = max(frontier, key=lambda e: (abs(float(scores[graph.edge_index[e]])), -graph.edge_index[e]))
        chosen.append(best)
        reached.add(best.source)
    return chosen


def test_greedy_selection_equals_a_literal_frontier_search(model):
    from circuits import Circuit

    graph = Graph.from_model(model)
    scores = torch.randn(len(graph.edges), generator=torch.Generator().manual_seed(7))
    circuit = Circuit(graph, scores)
    for n in (1, 10, 40):
        greedy = circuit.greedy(n)
        assert set(greedy.edges_in_graph()) == set(literal_greedy(graph, scores, n))
        assert greedy.n_edges == n
    with pytest.raises(ValueError, match="n must be in 0.."):
        circuit.greedy(len(graph.edges) + 1)


def test_padded_rows_with_a_shared_prefix_equal_their_unpadded_runs(model):
    clean, corrupt, _ = inputs()
    corrupt = torch.cat([clean[:, :4], corrupt[:, 4:]], dim=1)  # the prefix key/value path is used
    graph = Graph.from_model(model)
    mask = torch.ones_like(clean)
    mask[1, :2] = 0  # example 1 is left-padded by two tokens
    metric = LogitDifference.last_position(mask, correct=[5, 6], incorrect=[7, 8], reduce="none")
    masks = (torch.rand(2, len(graph.edges), generator=torch.Generator().manual_seed(8)) > 0.5).float()
    padded = patch_edges(model, clean, corrupt, graph, masks, metric, attention_mask=mask)
    short = LogitDifference.last_position(torch.ones(1, 4), correct=[6], incorrect=[8], reduce="none")
    alone = patch_edges(model, clean[1:, 2:], corrupt[1:, 2:], graph, masks, short)
    torch.testing.assert_close(padded[:, 1], alone[:, 0], atol=1e-5, rtol=0)
    reference = reference_patch_edges(model, clean[1:, 2:], corrupt[1:, 2:], graph, masks[0], short)
    torch.testing.assert_close(alone[0], reference, atol=1e-5, rtol=0)
