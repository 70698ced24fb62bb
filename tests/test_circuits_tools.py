"""Circuit selection, pruning, faithfulness curves and files."""

from __future__ import annotations

import json

import pytest
import torch

import mechinterp
from circuits import (
    Circuit,
    Edge,
    Graph,
    Node,
    eap_scores,
    faithfulness_curve,
    patch_edges,
    read_json,
    to_dot,
    write_eap_ig_json,
    write_json,
)
from mechinterp.metrics import LogitDifference
from mechinterp.models.tiny import tiny_hf_model


@pytest.fixture(scope="module")
def setup():
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(3, 98, (2, 6), generator=generator)
    corrupt = torch.randint(3, 98, (2, 6), generator=generator)
    metric = LogitDifference.last_position(
        torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8], reduce="none"
    )
    graph = Graph.from_model(model)
    circuit = Circuit(graph, eap_scores(model, clean, corrupt, graph, metric), metadata={"algorithm": "eap"})
    return model, clean, corrupt, metric, circuit


def test_selection_and_pruning(setup):
    _, _, _, _, circuit = setup
    top = circuit.top_n(10)
    assert top.n_edges == 10
    kept = top.scores.abs()[top.in_graph].min()
    assert bool((top.scores.abs()[~top.in_graph] <= kept).all())
    assert circuit.threshold(float(kept)).n_edges >= 10
    graph = circuit.graph
    # one path input -> a0.h1 -> logits plus a dangling edge into an MLP that reaches nothing
    chosen = [
        Edge(Node("input"), Node("head", 0, 1), "q"),
        Edge(Node("head", 0, 1), Node("logits"), "logits"),
        Edge(Node("head", 0, 2), Node("mlp", 1), "mlp"),
    ]
    mask = torch.zeros(len(graph.edges), dtype=torch.bool)
    for edge in chosen:
        mask[graph.edge_index[edge]] = True
    pruned = Circuit(graph, circuit.scores, mask).pruned()
    assert pruned.edges_in_graph() == chosen[:2]


def test_faithfulness_curve_is_one_batched_forward_with_exact_ends(setup):
    model, clean, corrupt, metric, circuit = setup
    n = len(circuit.graph.edges)
    curve = faithfulness_curve(model, clean, corrupt, circuit, metric, counts=[0, 5, 20, n])
    torch.testing.assert_close(
        curve.faithfulness[-1], torch.tensor(1.0), atol=1e-4, rtol=0
    )  # every edge kept
    torch.testing.assert_close(curve.faithfulness[0], torch.tensor(0.0), atol=1e-4, rtol=0)  # none kept
    with torch.no_grad():
        assert curve.full_model == pytest.approx(float(metric(model(clean)).mean()), abs=1e-4)
        assert curve.all_patched == pytest.approx(float(metric(model(corrupt)).mean()), abs=1e-4)
    mask = torch.ones(1, n)
    mask[0, circuit.scores.abs().argsort(descending=True)[:5]] = 0
    single = patch_edges(model, clean, corrupt, circuit.graph, mask, metric).mean()
    assert float(curve.values[1]) == pytest.approx(float(single), abs=1e-5)
    x, y = [c / n for c in curve.counts], curve.faithfulness.tolist()
    literal_area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
    assert curve.area == pytest.approx(literal_area, abs=1e-6)


def test_json_round_trip_and_other_formats(setup, tmp_path):
    model, _, _, _, circuit = setup
    selected = circuit.top_n(12)
    path = write_json(selected, tmp_path / "circuit.json")
    loaded = read_json(path, model)
    assert torch.equal(loaded.scores, selected.scores.double()) and torch.equal(
        loaded.in_graph, selected.in_graph
    )
    assert loaded.metadata == {"algorithm": "eap"} and loaded.graph.edges == selected.graph.edges
    eap = json.loads(write_eap_ig_json(selected, tmp_path / "eap.json").read_text())
    # EAP-IG un-groups GQA: a key/value edge becomes one edge per query head of its group (2 here)
    ungrouped = sum(2 if edge.channel in ("k", "v") else 1 for edge in selected.edges_in_graph())
    assert sum(edge["in_graph"] for edge in eap["edges"].values()) == ungrouped
    assert "input->a0.h0<q>" in eap["edges"]
    dot = to_dot(selected)
    assert dot.startswith("digraph circuit {") and dot.count("->") == 12
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_bad_circuit_files(setup, tmp_path):
    model, _, _, _, circuit = setup
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_json(broken, model)
    other_format = tmp_path / "other.json"
    other_format.write_text(json.dumps({"format": "eap-ig"}))
    with pytest.raises(ValueError, match="is not a mechinterp circuit file"):
        read_json(other_format, model)
    hf_model, tokenizer = tiny_hf_model("llama", n_layers=3)
    bigger = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    write_json(circuit, tmp_path / "c.json")
    with pytest.raises(ValueError, match="describes a different graph"):
        read_json(tmp_path / "c.json", bigger)
    with pytest.raises(ValueError, match=r"scores must be \["):
        Circuit(circuit.graph, torch.zeros(3))


def test_algorithms_share_one_signature(setup):
    from circuits import ALGORITHMS, ACDCConfig, EAPConfig, PairedData

    model, clean, corrupt, metric, circuit = setup
    data = PairedData(clean, corrupt)
    graph = circuit.graph
    eap_circuit = ALGORITHMS["eap"](model, data, metric, graph, config=EAPConfig(top_n=15))
    assert 0 < eap_circuit.n_edges <= 15 and eap_circuit.metadata["algorithm"] == "eap"
    keep_everything = ALGORITHMS["acdc"](model, data, metric, graph, config=ACDCConfig(threshold=0.0))
    assert keep_everything.n_edges == len(graph.edges)
    sparse = ALGORITHMS["acdc"](model, data, metric, graph, config=ACDCConfig(threshold=0.2))
    assert sparse.n_edges < len(graph.edges)
    # every kept edge changed the metric by at least the threshold when it was tried
    assert bool((sparse.scores[sparse.in_graph] >= 0.2).all())
    assert sparse.edges_in_graph() == sparse.pruned().edges_in_graph()
    with pytest.raises(ValueError, match="tokens differ in shape"):
        PairedData(clean, corrupt[:, :3])


def test_exact_edge_patching_scores_each_edge_alone(setup):
    from circuits import ALGORITHMS, EdgePatchingConfig, PairedData, reference_patch_edges

    model, clean, corrupt, metric, circuit = setup
    graph = circuit.graph
    exact = ALGORITHMS["edge-patching"](
        model,
        PairedData(clean, corrupt),
        metric,
        graph,
        config=EdgePatchingConfig(top_n=10, rows_per_forward=7),
    )
    base = reference_patch_edges(model, clean, corrupt, graph, torch.zeros(len(graph.edges)), metric).mean()
    for index in (0, 17, len(graph.edges) - 1):
        alone = torch.zeros(len(graph.edges))
        alone[index] = 1
        expected = reference_patch_edges(model, clean, corrupt, graph, alone, metric).mean() - base
        assert abs(float(exact.scores[index]) - float(expected)) < 1e-5
    assert 0 < exact.n_edges <= 10 and exact.metadata["config"]["rows_per_forward"] == 7


def test_eap_ranks_like_exact_patching(setup):
    from circuits import ALGORITHMS, PairedData
    from mechinterp.patching.compare import spearman

    model, clean, corrupt, metric, circuit = setup
    data = PairedData(clean, corrupt)
    exact = ALGORITHMS["edge-patching"](model, data, metric, circuit.graph).scores
    assert spearman(ALGORITHMS["eap"](model, data, metric, circuit.graph).scores, exact) > 0.5


def test_eap_ig_is_complete_on_the_input_node(setup):
    """Integrated gradients are complete: the input node's edges carry the whole embedding
    change, so their scores sum to metric(corrupt) - metric(clean) (up to the quadrature).
    This also checks that each destination's gradient is its own path's alone."""
    from circuits import eap_ig_scores

    model, clean, corrupt, metric, circuit = setup
    graph = circuit.graph
    scores = eap_ig_scores(model, clean, corrupt, graph, metric, steps=64)
    from_input = [i for i, e in enumerate(graph.edges) if e.source == Node("input")]
    with torch.no_grad():
        total_change = metric(model(corrupt)).sum() - metric(model(clean)).sum()
    assert abs(float(scores[from_input].sum()) - float(total_change)) < 2e-3 * max(
        1.0, abs(float(total_change))
    )


def test_node_level_circuits_keep_the_edges_among_the_top_nodes(setup):
    from circuits import ALGORITHMS, EAPConfig, PairedData

    model, clean, corrupt, metric, circuit = setup
    graph = circuit.graph
    nodes = ALGORITHMS["eap"](
        model, PairedData(clean, corrupt), metric, graph, config=EAPConfig(top_n=3, level="node")
    )
    kept_sources = {e.source for e in nodes.edges_in_graph()} - {Node("input")}
    assert 0 < len(kept_sources) <= 3
    totals = {}
    for edge, score in zip(graph.edges, nodes.scores.tolist(), strict=True):
        totals[edge.source] = totals.get(edge.source, 0.0) + score
    best = sorted((n for n in totals if n.kind != "input"), key=lambda n: -abs(totals[n]))[:3]
    assert kept_sources <= set(best)
    with pytest.raises(ValueError, match="n must be in 0.."):
        circuit.top_nodes(10_000)


@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_evaluate_circuit_matches_the_curve_and_its_ends(setup, ablation):
    from circuits import evaluate_circuit

    model, clean, corrupt, metric, circuit = setup
    top = circuit.top_n(12)
    score = evaluate_circuit(model, clean, corrupt, top, metric, ablation=ablation)
    curve = faithfulness_curve(
        model, clean, corrupt, circuit, metric, [0, 12, len(circuit.graph.edges)], ablation=ablation
    )
    assert abs(score.faithfulness - float(curve.faithfulness[1])) < 1e-5
    assert abs(float(curve.faithfulness[0])) < 1e-5 and abs(float(curve.faithfulness[-1]) - 1) < 1e-5
    with torch.no_grad():
        assert abs(score.full_model - float(metric(model(clean)).mean())) < 1e-5
    with pytest.raises(ValueError, match="counts must be a non-empty list"):
        faithfulness_curve(model, clean, corrupt, circuit, metric, [len(circuit.graph.edges) + 1])
