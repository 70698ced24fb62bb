"""Outputs of attribution graphs: circuit-tracer's local-server graph folder (its pydantic models
and its server read it), feature labels in the JSON, and our offline HTML view (rendered in
headless Chromium: every kept node drawn, clicking a node shows it, edges show their heads)."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from browser import render_page, skip_without_chromium

from circuits.tracing import (
    Replacement,
    prune_graph,
    random_transcoders,
    to_attribution_dict,
    trace,
    write_graph_folder,
)
from mechinterp.plotting import attribution_graph_figure, write_attribution_graph_html

PROMPT = "cab ca"


@pytest.fixture(scope="module")
def traced(tiny_llama):
    tc = random_transcoders(tiny_llama, 16, kind="clt", input_site="mlp_normalized", seed=1)
    graph = trace(tiny_llama, tc, PROMPT, progress=False, batch_size=64)
    pruned = prune_graph(graph, node_threshold=0.99)  # random transcoders: keep some features too
    return tiny_llama, tc, graph, pruned, Replacement(tiny_llama, tc, graph.tokens[None])


def _feature_labels(graph, pruned) -> dict[tuple[int, int], str]:
    kept = [n for n in pruned.node_mask.nonzero()[:, 0].tolist() if graph.kind(n) == "feature"]
    return {tuple(graph.features[n, [0, 2]].tolist()): f"label of node {n}" for n in kept[:3]}


def test_graph_folder_appends_graphs_and_circuit_tracer_reads_it(traced, tmp_path):
    _, _, graph, pruned, _ = traced
    folder = tmp_path / "graphs"
    first = write_graph_folder(pruned, folder, slug="first", scan="tiny-llama")
    second = write_graph_folder(pruned, folder, slug="second")
    assert (first, second) == (folder / "first.json", folder / "second.json")
    index = json.loads((folder / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["first", "second"]  # appended, not overwritten
    for entry in index["graphs"]:
        data = json.loads((folder / f"{entry['slug']}.json").read_text())
        assert entry == {k: v for k, v in data["metadata"].items() if k not in ("mechinterp", "info")}
        assert entry["prompt_tokens"] == list(graph.token_strings) and entry["node_threshold"] == 0.99
        assert len(data["nodes"]) == int(pruned.node_mask.sum())
        assert len(data["links"]) == int(pruned.edge_mask.sum())
    assert index["graphs"][0]["scan"] == "tiny-llama"

    graph_models = pytest.importorskip("circuit_tracer.frontend.graph_models")
    for entry in index["graphs"]:
        graph_models.Metadata.model_validate(entry)
        model = graph_models.Model.model_validate(json.loads((folder / f"{entry['slug']}.json").read_text()))
        assert model.metadata.slug == entry["slug"] and len(model.nodes) == int(pruned.node_mask.sum())

    # circuit-tracer's own server serves the folder: the index and each graph, at the URLs its page reads
    local_server = pytest.importorskip("circuit_tracer.frontend.local_server")
    server = local_server.serve(data_dir=str(folder), port=0)
    try:
        port = server.httpd.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/graph-metadata.json") as reply:
            assert json.loads(reply.read()) == index
        for slug in ("first", "second"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/graph_data/{slug}.json") as reply:
                assert json.loads(reply.read())["metadata"]["slug"] == slug
    finally:
        server.stop()


def test_graph_folder_refuses_slug_clashes_and_unknown_layouts(traced, tmp_path):
    _, _, _, pruned, _ = traced
    write_graph_folder(pruned, tmp_path, slug="cab")
    with pytest.raises(ValueError, match="already has a graph with slug 'cab'"):
        write_graph_folder(pruned, tmp_path, slug="cab")
    write_graph_folder(pruned, tmp_path, slug="cab", scan="other", replace=True)
    index = json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]
    assert [(g["slug"], g["scan"]) for g in index] == [("cab", "other")]  # replaced in place

    (tmp_path / "loose.json").write_text("{}")  # a file of that name, though not listed
    with pytest.raises(ValueError, match="already has a graph with slug 'loose'"):
        write_graph_folder(pruned, tmp_path, slug="loose")

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "graph-metadata.json").write_text(json.dumps({"items": []}))
    with pytest.raises(ValueError, match="is not a circuit-tracer graph index"):
        write_graph_folder(pruned, odd, slug="x")
    assert not (odd / "x.json").exists()  # nothing written
    (odd / "graph-metadata.json").write_text("not json")
    with pytest.raises(ValueError, match="is not JSON"):
        write_graph_folder(pruned, odd, slug="x")
    with pytest.raises(ValueError, match="is a file"):
        write_graph_folder(pruned, tmp_path / "loose.json", slug="x")
    with pytest.raises(ValueError, match="is not a valid Neuronpedia name"):
        write_graph_folder(pruned, tmp_path, slug="a/b")


def test_labels_become_clerps(traced):
    _, _, graph, pruned, _ = traced
    labels = _feature_labels(graph, pruned)
    data = to_attribution_dict(pruned, slug="s", labels=labels)
    clerps = {
        (int(n["layer"]), int(n["node_id"].split("_")[1])): n["clerp"]
        for n in data["nodes"]
        if n["feature_type"] == "cross layer transcoder"
    }
    assert labels and all(clerps[key] == text for key, text in labels.items())
    assert all(text == "" for key, text in clerps.items() if key not in labels)


def test_figure_draws_every_kept_node_and_edge_with_heads(traced):
    _, _, graph, pruned, rep = traced
    labels = _feature_labels(graph, pruned)
    figure = attribution_graph_figure(pruned, labels=labels, replacement=rep)
    nodes = figure.data[-1]
    assert nodes.name == "nodes"
    assert list(nodes.customdata) == pruned.node_mask.nonzero()[:, 0].tolist()
    hover = "\n".join(nodes.hovertext)
    assert all(text in hover for text in labels.values())
    middles = figure.data[-2]
    assert len(middles.x) == int(pruned.edge_mask.sum())
    assert any(re.search(r"heads: L\d+\.H\d+ [+-]", text) for text in middles.hovertext)
    # nodes at their prompt position (x, within 0.4) and layer (y; tokens -1, logits n_layers)
    for node, x, y in zip(nodes.customdata, nodes.x, nodes.y, strict=True):
        kind = graph.kind(int(node))
        if kind == "feature":
            layer, pos, _ = graph.features[int(node)].tolist()
            assert y == layer and abs(x - pos) <= 0.4
        elif kind == "token":
            assert y == -1 and abs(x - (int(node) - graph.token_node(0))) <= 0.4
        elif kind == "logit":
            assert y == graph.n_layers


def test_html_view_renders_offline_with_every_kept_node(traced, tmp_path):
    pytest.importorskip("playwright")
    skip_without_chromium()
    _, _, graph, pruned, rep = traced
    labels = _feature_labels(graph, pruned)
    (layer, index), label = next(iter(labels.items()))
    examples = {(layer, index): ["the <<cab>> came", "a <<cab>> </script> ride"]}
    path = write_attribution_graph_html(
        pruned, tmp_path / "graph.html", labels=labels, examples=examples, replacement=rep
    )
    text = path.read_text()
    assert "<script src=" not in text and 'src="http' not in text  # nothing fetched
    node = next(
        i
        for i, n in enumerate(pruned.node_mask.nonzero()[:, 0].tolist())
        if graph.kind(n) == "feature" and tuple(graph.features[n, [0, 2]].tolist()) == (layer, index)
    )
    script = f"""() => {{
        const plot = document.getElementById('attribution-graph');
        const traces = plot.querySelectorAll('.scatterlayer .trace');
        const drawn = traces[traces.length - 1].querySelectorAll('path.point').length;
        window.mechinterpShowNode({node});
        const panel = document.getElementById('details');
        return {{drawn, panel: panel.textContent, bold: [...panel.querySelectorAll('.example b')].map(b => b.textContent)}};
    }}"""
    rendered = render_page(path, script=script)
    assert rendered.console_errors == [] and rendered.page_errors == []
    assert rendered.plot_count == 1
    assert rendered.value["drawn"] == int(pruned.node_mask.sum())
    panel = rendered.value["panel"]
    assert label in panel and "activation" in panel and "strongest incoming edges" in panel
    assert "a cab </script> ride" in panel and rendered.value["bold"] == ["cab", "cab"]
