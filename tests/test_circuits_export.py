"""Circuit export formats load back, bad files fail with specific errors, writes are atomic, and
ROC / AUC against reference circuits matches hand-computed and literal pairwise values."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess

import networkx as nx
import pytest
import torch
from browser import render_page, skip_without_chromium  # tests/ is on sys.path (rootdir conftest)

import circuits.export as export
import mechinterp
from circuits import (
    WRITERS,
    Circuit,
    Edge,
    FaithfulnessCurve,
    Graph,
    Node,
    read_json,
    roc_against,
    roc_curve,
    write,
    write_eap_ig_json,
    write_graphml,
    write_json,
    write_neuronpedia_json,
)
from mechinterp.models.tiny import tiny_hf_model
from mechinterp.plotting import circuit_figure, faithfulness_figure, roc_figure, write_circuit_html


def _model(family: str, **kwargs):
    hf_model, tokenizer = tiny_hf_model(family, **kwargs)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="module", params=[("llama", 2), ("gpt_neox", None)], ids=["llama-gqa", "neox-parallel"])
def model(request):
    family, n_kv_heads = request.param
    return _model(family, n_kv_heads=n_kv_heads)


def _circuit(graph: Graph, seed: int = 0, dtype: torch.dtype = torch.float64) -> Circuit:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(graph.edges), generator=generator, dtype=dtype)
    in_graph = torch.rand(len(graph.edges), generator=generator) < 0.3
    metadata = {
        "algorithm": "eap",
        "config": {"top_n": 12, "steps": None},
        "prompt": {
            "text": "When Mary and John went",
            "tokens": ["When", " Mary", " and", " John", " went"],
            "token_ids": [5, 6, 7, 8, 9],
            "position": 4,
            "answer": " to",
            "answer_id": 10,
            "answer_prob": 0.25,
            "answer_source": "correct answer",
        },
        "metric": "logit_diff",
    }
    return Circuit(graph, scores, in_graph, metadata)


@pytest.fixture(scope="module")
def circuit(model):
    return _circuit(Graph.from_model(model))


@pytest.mark.parametrize("with_model", [True, False], ids=["with-model", "file-only"])
def test_json_round_trip_is_exact(model, circuit, tmp_path, with_model):
    loaded = read_json(write_json(circuit, tmp_path / "c.json"), model if with_model else None)
    assert loaded.graph == Graph.from_model(model)
    assert loaded.graph.edge_index == circuit.graph.edge_index
    assert loaded.scores.dtype == torch.float64 and torch.equal(loaded.scores, circuit.scores)
    assert torch.equal(loaded.in_graph, circuit.in_graph)
    assert loaded.metadata == circuit.metadata
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_eap_ig_names(model, circuit, tmp_path):
    data = json.loads(write_eap_ig_json(circuit, tmp_path / "eap.json").read_text())
    assert "input->a0.h0<q>" in data["edges"] and "a0.h3->logits" in data["edges"]
    # EAP-IG has a key/value input per query head: GQA key/value heads are un-grouped
    assert {"input->a1.h2<k>", "input->a1.h3<v>"} <= set(data["edges"])
    # sequential blocks feed a layer's heads into its own MLP, parallel ones do not
    assert ("a1.h1->m1" in data["edges"]) == (not model.architecture.parallel_attn_mlp)
    edge = Edge(Node("head", 0, 1), Node("mlp", 1), "mlp")
    assert data["edges"]["a0.h1->m1"]["score"] == float(circuit.scores[circuit.graph.edge_index[edge]])


def test_graphml_parses_with_networkx(circuit, tmp_path):
    loaded = nx.read_graphml(write_graphml(circuit, tmp_path / "c.graphml"))
    graph, kept = circuit.graph, circuit.nodes_in_graph()
    assert list(loaded.nodes) == [node.name for node in graph.nodes]
    for node in graph.nodes:
        expected = {"kind": node.kind, "in_graph": node in kept}
        expected |= {key: value for key in ("layer", "head") if (value := getattr(node, key)) is not None}
        assert loaded.nodes[node.name] == expected
    edges = {key: data for _, _, key, data in loaded.edges(keys=True, data=True)}
    assert sorted(edges) == sorted(edge.name for edge in graph.edges)
    for edge, score, keep in zip(
        graph.edges, circuit.scores.tolist(), circuit.in_graph.tolist(), strict=True
    ):
        assert edges[edge.name] == {"channel": edge.channel, "score": score, "in_graph": keep}
    assert json.loads(loaded.graph["metadata"]) == circuit.metadata
    assert loaded.graph["n_layers"] == graph.n_layers


def test_dot_renders_with_graphviz(circuit, tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` not installed (apt-get install graphviz; .ci/run does it)")
    path = write(circuit, tmp_path / "c.dot", to="dot")
    rendered = subprocess.run(["dot", "-Tsvg", str(path)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    assert "<svg" in rendered.stdout and rendered.stdout.count('class="edge"') == circuit.n_edges


def test_html_renders_offline_in_headless_chromium(circuit, tmp_path):
    pytest.importorskip("playwright")
    skip_without_chromium()
    path = write_circuit_html(circuit, tmp_path / "c.html")
    html = path.read_text()
    assert '<script src="http' not in html  # plotly.js is inlined, no CDN
    result = render_page(path)
    assert result.console_errors == [] and result.page_errors == []
    assert result.plot_count == 1


def test_figures(circuit):
    figure = circuit_figure(circuit)
    hover = [text for trace in figure.data if trace.hovertext for text in trace.hovertext]
    assert sum("channel" in text for text in hover) == circuit.n_edges  # one hover point per in-graph edge
    colors = {trace.line.color for trace in figure.data if trace.mode == "lines"}
    assert colors == {"royalblue", "crimson"}
    roc = roc_curve(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([True, False, True]))
    assert (
        list(roc_figure(roc).data[0].x) == roc.fpr.tolist()
        and "AUC 0.500" in roc_figure(roc).layout.title.text
    )
    curve = FaithfulnessCurve(
        counts=[0, 10, 20],
        values=torch.tensor([0.0, 1.0, 2.0]),
        faithfulness=torch.tensor([0.0, 0.5, 1.0]),
        full_model=2.0,
        all_patched=0.0,
        n_edges_total=20,
    )
    assert list(faithfulness_figure(curve).data[0].y) == [0.0, 0.5, 1.0]


def test_neuronpedia_json_shape(circuit, tmp_path):
    data = json.loads(write_neuronpedia_json(circuit, tmp_path / "np.json", slug="ioi").read_text())
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert data["metadata"]["slug"] == "ioi" and data["metadata"]["scan"] == circuit.graph.model_name
    assert data["metadata"]["mechinterp"]["metadata"] == circuit.metadata
    names = [node["mechinterp_name"] for node in data["nodes"]]
    assert names[0] == "input" and names[-1] == "logits"
    kept = {node.name for node in circuit.nodes_in_graph()}
    assert {name.replace(".kv", ".h") for name in names} == kept | {"input", "logits"}
    assert sum(link["weight"] for link in data["links"]) == pytest.approx(
        float(circuit.scores[circuit.in_graph].sum())
    )


def test_write_dispatches_every_format(circuit, tmp_path):
    for name in WRITERS:
        assert write(circuit, tmp_path / f"c.{name}", to=name).stat().st_size > 0
    with pytest.raises(ValueError, match=r"unknown circuit format 'svg'; choose from json, eap-ig"):
        write(circuit, tmp_path / "c.svg", to="svg")
    with pytest.raises(
        ValueError, match=r"the interactive HTML page is mechinterp.plotting.write_circuit_html"
    ):
        write(circuit, tmp_path / "c.html", to="html")


def _edit(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_bad_files_give_specific_errors(tiny_llama, tmp_path):
    circuit = _circuit(Graph.from_model(tiny_llama))
    path = tmp_path / "c.json"
    (tmp_path / "broken.json").write_text('{"format": "mechinterp-circuit", ')
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        read_json(tmp_path / "broken.json")
    cases = [
        (lambda d: d.update(format="eap-ig"), "is not a mechinterp circuit file \\(format 'eap-ig'"),
        (lambda d: d.update(version=7), "unsupported circuit file version 7"),
        (lambda d: d.pop("edges"), "missing field 'edges'"),
        (lambda d: d["model"].pop("n_heads"), "missing field model.'n_heads'"),
        (
            lambda d: d["edges"][3].update(score="0.5"),
            r"field edges\[3\].'score' must be int or float, got str",
        ),
        (lambda d: d["edges"][3].update(in_graph=1), r"field edges\[3\].'in_graph' must be bool, got int"),
        (lambda d: d["edges"][5].update(name="a0.h9->m1"), r"edges \['a0.h9->m1'\] are not edges between"),
        (lambda d: d["edges"][5].update(name="input->m0<q>"), r"edges \['input->m0<q>'\] are not edges"),
        (lambda d: d["edges"][6].update(name=d["edges"][5]["name"]), "edge names appear more than once"),
        (lambda d: d["nodes"].__setitem__(1, "a9.h0"), r"node names \['a9.h0'\] do not exist in a 2-layer"),
    ]
    for change, message in cases:
        write_json(circuit, path)
        _edit(path, change)
        with pytest.raises(ValueError, match=message):
            read_json(path)
    write_json(circuit, path)
    bigger = _model("llama", n_kv_heads=2, n_layers=3)
    with pytest.raises(ValueError, match=r"describes a different graph \('llama', \d+ edges\) than 'llama'"):
        read_json(path, bigger)
    assert read_json(path, tiny_llama).graph == circuit.graph


def test_interrupted_writes_leave_no_partial_file(circuit, tmp_path, monkeypatch):
    def write_half_then_fail(graph, path):
        path.write_text("<?xml version='1.0'?><graphml>")
        raise KeyboardInterrupt

    monkeypatch.setattr(export.nx, "write_graphml", write_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_graphml(circuit, tmp_path / "c.graphml")
    assert list(tmp_path.iterdir()) == []
    existing = write_json(circuit, tmp_path / "c.json")
    before = existing.read_text()

    def fail_rename(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "replace", fail_rename)
    with pytest.raises(OSError, match="disk full"):
        write_json(_circuit(circuit.graph, seed=1), existing)
    assert existing.read_text() == before  # the old file is untouched
    assert list(tmp_path.iterdir()) == [existing]  # and no temporary file is left


def _pairwise_auc(scores: list[float], labels: list[bool]) -> float:
    """The literal definition: P(positive outranks negative), ties count one half."""
    pairs = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for (p, lp), (n, ln) in itertools.product(zip(scores, labels, strict=True), repeat=2)
        if lp and not ln
    ]
    return sum(pairs) / len(pairs)


def test_roc_curve_hand_computed_and_literal():
    # positives 3, 2; negatives 2, 1: pairs (3,2) (3,1) (2,1) win, (2,2) ties: 3.5 / 4
    roc = roc_curve(torch.tensor([3.0, 2.0, 2.0, 1.0]), torch.tensor([True, True, False, False]))
    assert roc.tpr.tolist() == [0.0, 0.5, 1.0, 1.0] and roc.fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert roc.thresholds.tolist() == [float("inf"), 3.0, 2.0, 1.0] and roc.auc == 0.875
    labels = torch.tensor([True, False, False])
    assert roc_curve(torch.tensor([3.0, 2.0, 1.0]), labels).auc == 1.0
    assert roc_curve(torch.tensor([1.0, 2.0, 3.0]), labels).auc == 0.0
    tied = roc_curve(torch.ones(3), labels)
    assert tied.auc == 0.5 and tied.fpr.tolist() == [0.0, 1.0]
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40,), generator=generator).float()  # many ties
    labels = torch.rand(40, generator=generator) < 0.4
    assert roc_curve(scores, labels).auc == pytest.approx(_pairwise_auc(scores.tolist(), labels.tolist()))
    with pytest.raises(ValueError, match="needs items in and out of the reference; got 0 in and 3 out"):
        roc_curve(torch.ones(3), torch.zeros(3, dtype=torch.bool))


def test_roc_against_reference_edges_and_nodes(tiny_llama):
    circuit = _circuit(Graph.from_model(tiny_llama), dtype=torch.float32)
    graph, magnitude = circuit.graph, circuit.scores.abs()
    top = circuit.top_n(4)
    assert roc_against(circuit, [e.name for e in top.edges_in_graph()]).auc == 1.0
    reference = [edge.name for edge in graph.edges[::7]]
    labels = [edge.name in reference for edge in graph.edges]
    roc = roc_against(circuit, reference)
    assert roc.auc == pytest.approx(_pairwise_auc(magnitude.tolist(), labels))
    assert (roc.n_positive, roc.n_negative) == (len(reference), len(graph.edges) - len(reference))
    # nodes join top-n circuits in the order of their strongest edge: a top-n circuit's nodes are a perfect reference
    nodes = [n.name for n in top.nodes_in_graph() if n.kind in ("head", "mlp")]
    assert roc_against(circuit, [*nodes, "input"], level="node").auc == 1.0
    components = [n for n in graph.nodes if n.kind in ("head", "mlp")]
    strongest = [
        max(float(m) for e, m in zip(graph.edges, magnitude, strict=True) if node in (e.source, e.target))
        for node in components
    ]
    picked = {"a0.h1", "a1.h3", "m0"}
    roc = roc_against(circuit, picked, level="node")
    assert roc.auc == pytest.approx(_pairwise_auc(strongest, [n.name in picked for n in components]))


def test_unknown_reference_names(circuit):
    with pytest.raises(
        ValueError,
        match=r"1 edge name\(s\) in the reference are not in the graph: 'a0\.h9->m1' \(closest: .*a0\.h1->m1",
    ):
        roc_against(circuit, ["a0.h9->m1", "a0.h1->m1"])
    with pytest.raises(ValueError, match=r"5 node name\(s\).*'a7\.h1' \(closest: a1\.h1.* and 2 more"):
        roc_against(circuit, ["a7.h1", "a8.h1", "a9.h1", "m9", "m8", "m0"], level="node")
    with pytest.raises(TypeError, match="not the single string 'm0'"):
        roc_against(circuit, "m0", level="node")
