"""Position-aware circuits: edges per span of positions, on the one masked executor."""

from __future__ import annotations

import functools

import pytest
import torch

import mechinterp
from circuits import (
    Graph,
    PairedData,
    PositionalCircuit,
    eap_ig_scores,
    eap_scores,
    patch_edges,
    positional_faithfulness,
    positional_scores,
    reference_patch_edges,
    relp_scores,
    to_neuronpedia_dict,
)
from mechinterp.data import PositionSpans, PromptPairs
from mechinterp.data.ioi import ioi_spans
from mechinterp.metrics import LogitDifference
from mechinterp.models.tiny import tiny_hf_model


@functools.cache
def tiny(family: str):
    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=2 if family == "llama" else None)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


def pair():
    generator = torch.Generator().manual_seed(2)
    clean = torch.randint(3, 98, (2, 7), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 2] = 9
    corrupt[1, 4] = 11
    metric = LogitDifference.last_position(torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8])
    return clean, corrupt, metric


def labelled(batch: int, n_pos: int) -> PositionSpans:
    """Three labelled spans at different positions per example."""
    return PositionSpans.from_positions(n_pos, {"a": [2, 3], "end": [n_pos - 1] * batch})


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("score", [eap_scores, relp_scores, eap_ig_scores], ids=["eap", "relp", "eap-ig"])
def test_linear_scores_sum_over_spans_to_the_position_free_score(family, score):
    model = tiny(family)
    clean, corrupt, metric = pair()
    graph = Graph.from_model(model)
    free = score(model, clean, corrupt, graph, metric)
    for spans in (PositionSpans.per_position(*clean.shape), labelled(*clean.shape)):
        per_span = score(model, clean, corrupt, graph, metric, spans=spans)
        assert per_span.shape == (len(graph.edges), spans.n_spans)
        torch.testing.assert_close(per_span.sum(1), free, atol=1e-5 * float(free.abs().max()), rtol=1e-4)
    # before the first corrupted position nothing differs: those spans score 0
    per_position = score(model, clean, corrupt, graph, metric, spans=PositionSpans.per_position(*clean.shape))
    assert bool((per_position[:, :2] == 0).all())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_positional_edge_patch_of_every_span_is_the_position_free_patch(family):
    model = tiny(family)
    clean, corrupt, metric = pair()
    graph = Graph.from_model(model)
    generator = torch.Generator().manual_seed(3)
    masks = (torch.rand(3, len(graph.edges), generator=generator) < 0.3).float()
    free = patch_edges(model, clean, corrupt, graph, masks, metric)
    for spans in (PositionSpans.per_position(*clean.shape), labelled(*clean.shape)):
        everywhere = masks[..., None].expand(-1, -1, spans.n_spans)
        values = patch_edges(model, clean, corrupt, graph, everywhere, metric, spans=spans)
        torch.testing.assert_close(values, free, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_positional_edge_patch_matches_the_literal_reference(family, ablation):
    model = tiny(family)
    clean, corrupt, metric = pair()
    graph = Graph.from_model(model)
    spans = labelled(*clean.shape)
    generator = torch.Generator().manual_seed(4)
    masks = (torch.rand(2, len(graph.edges), spans.n_spans, generator=generator) < 0.3).float()
    values = patch_edges(model, clean, corrupt, graph, masks, metric, spans=spans, ablation=ablation)
    for row in range(2):
        expected = reference_patch_edges(
            model, clean, corrupt, graph, masks[row], metric, spans=spans, ablation=ablation
        )
        torch.testing.assert_close(values[row], expected, atol=1e-4, rtol=1e-4)
    # ACDC's shared prefix (start_layer) takes position-aware masks too
    shared = masks.clone()
    before = torch.tensor([e.target.layer == 0 for e in graph.edges])
    shared[1, before] = shared[0, before]
    late = patch_edges(
        model, clean, corrupt, graph, shared, metric, spans=spans, ablation=ablation, start_layer=1
    )
    torch.testing.assert_close(
        late,
        patch_edges(model, clean, corrupt, graph, shared, metric, spans=spans, ablation=ablation),
        atol=1e-5,
        rtol=1e-5,
    )


def test_mask_shapes_are_checked():
    model = tiny("gpt2")
    clean, corrupt, metric = pair()
    graph = Graph.from_model(model)
    spans = labelled(*clean.shape)
    with pytest.raises(ValueError, match=r"masks must be \[row, \d+, 3\]"):
        patch_edges(model, clean, corrupt, graph, torch.zeros(1, len(graph.edges)), metric, spans=spans)
    with pytest.raises(ValueError, match=r"masks must be \[row, \d+\]"):
        patch_edges(model, clean, corrupt, graph, torch.zeros(1, len(graph.edges), 3), metric)


def test_positional_circuit_scores_selection_faithfulness_and_export():
    model = tiny("gpt2")
    clean, corrupt, metric = pair()
    graph = Graph.from_model(model)
    data = PairedData(clean, corrupt)
    exact = positional_scores(
        model, data, metric, graph, method="edge-patching", spans=labelled(*clean.shape)
    )
    assert exact.scores.shape == (len(graph.edges), 3) and exact.metadata["spans"] == ["other", "a", "end"]
    # exact (edge, span) scores are the literal reference's one-edge patches
    spans = exact.spans
    base = reference_patch_edges(
        model, clean, corrupt, graph, torch.zeros(len(graph.edges), 3), metric, spans=spans
    )
    top = exact.scores.abs().flatten().topk(3).indices
    for flat in top.tolist():
        e, s = divmod(flat, 3)
        mask = torch.zeros(len(graph.edges), 3)
        mask[e, s] = 1
        expected = (
            reference_patch_edges(model, clean, corrupt, graph, mask, metric, spans=spans) - base
        ).mean()
        torch.testing.assert_close(exact.scores[e, s], expected, atol=1e-4, rtol=1e-4)
    assert positional_faithfulness(model, data, exact, metric) == pytest.approx(1.0)
    assert positional_faithfulness(model, data, exact.top_n(0), metric) == pytest.approx(0.0, abs=1e-6)
    small = exact.top_n(20)
    assert small.n_edges == 20 and len(small.edges_in_graph()) == 20
    free = small.position_free()
    assert free.n_edges == len({edge for edge, _ in small.edges_in_graph()})
    torch.testing.assert_close(free.scores, exact.scores.sum(1))
    nodes = exact.node_scores()
    assert len(nodes) == len(graph.source_nodes) * 3
    mlp0 = [i for i, e in enumerate(graph.edges) if e.source == graph.source_nodes[-1]]
    expected = float(exact.scores[mlp0, 2].sum())
    assert nodes[(graph.source_nodes[-1], "end")] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # Neuronpedia: one node per component and span, at the span's position (ctx_idx)
    eap = positional_scores(model, data, metric, graph, method="eap", spans=spans).top_n(30)
    exported = to_neuronpedia_dict(eap, scan="tiny", slug="positional")
    where = {"other": 5, "a": 2, "end": 6}  # example 0: "a" at 2, "end" at 6, "other" last at 5
    for node in exported["nodes"]:
        if "mechinterp_span" in node:
            assert node["ctx_idx"] == where[node["mechinterp_span"]]
    ids = [node["node_id"] for node in exported["nodes"]]
    assert len(ids) == len(set(ids))
    assert {link["source"] for link in exported["links"]} <= set(ids)


def test_default_spans_and_bad_input():
    model = tiny("gpt2")
    clean, corrupt, metric = pair()
    graph = Graph.from_model(model)
    circuit = positional_scores(model, PairedData(clean, corrupt), metric, graph)  # one span per position
    assert circuit.spans.labels == tuple(str(p) for p in range(7))
    with pytest.raises(ValueError, match="method must be one of"):
        positional_scores(model, PairedData(clean, corrupt), metric, graph, method="acdc")
    with pytest.raises(ValueError, match="scores must be"):
        PositionalCircuit(graph, circuit.spans, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="ids must lie"):
        PositionSpans(("a",), torch.ones(2, 3, dtype=torch.long))


def test_ioi_spans_are_found_in_the_tokens():
    # "<bos> When IO and S went ... , S gave ... to" with made-up ids: IO=40, S=50
    clean = torch.tensor([[1, 10, 40, 11, 50, 12, 13, 50, 14, 15], [1, 10, 50, 11, 40, 12, 13, 50, 14, 15]])
    corrupt = clean.clone()
    corrupt[:, 7] = 40
    pairs = PromptPairs(
        clean=clean,
        corrupt=corrupt,
        correct=torch.tensor([40, 40]),
        incorrect=torch.tensor([50, 50]),
        positions=torch.tensor([9, 9]),
    )
    spans = ioi_spans(pairs)
    assert spans.labels == ("other", "io", "s1", "s2", "end")
    by_label = [
        {spans.labels[i]: p for p, i in enumerate(row.tolist()) if spans.labels[i] != "other"}
        for row in spans.ids
    ]
    assert by_label == [{"io": 2, "s1": 4, "s2": 7, "end": 9}, {"s1": 2, "io": 4, "s2": 7, "end": 9}]
    assert pairs.select(1).spans is None
    with_spans = PromptPairs(
        **{k: getattr(pairs, k) for k in ("clean", "corrupt", "correct", "incorrect", "positions")},
        spans=spans,
    )
    assert with_spans.select(1).spans.ids.shape == (1, 10)
    bad = PromptPairs(
        clean=clean,
        corrupt=corrupt,
        correct=torch.tensor([40, 99]),
        incorrect=torch.tensor([50, 50]),
        positions=torch.tensor([9, 9]),
    )
    with pytest.raises(ValueError, match="mention"):
        ioi_spans(bad)
