"""An offline, interactive view of a pruned attribution graph (``circuits.tracing``).

Nodes sit at (prompt position, layer): token embeddings at the bottom, the features and error
nodes of layer ``l`` on row ``l`` (nodes of one position and layer side by side, the most
influential in the middle), the logit nodes on top at the last position. Markers: circle =
feature, square = error node, diamond = token, star = logit; size grows with influence on the
logits. Edges are blue (positive) or red (negative), wider for larger ``|weight|``.

Hovering a node shows its label, activation, influence and strongest kept edges in and out;
clicking it fills the panel beside the graph with all of that and, when ``examples`` are given,
the feature's top-activating contexts (``<<marked>>`` tokens in bold). Hovering the dot in the
middle of an edge shows its weight and, with the prompt's ``Replacement``, the attention heads
that carry most of it (``circuits.tracing.head_splits``: ``L1.H0 +0.12`` is the part of the edge
through head 0 of layer 1).

Example:
    >>> pruned = prune_graph(trace(model, transcoders, "The cat sat on the"))
    >>> write_attribution_graph_html(pruned, "cat.html", labels={(1, 17): "feline words"})
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from circuits.export import write_text_atomically
from circuits.tracing import HeadSplit, PrunedGraph, Replacement, kept_head_splits

FeatureLabels = Mapping[tuple[int, int], str]
_WIDTH_LEVELS = 4
_SYMBOLS = {"feature": "circle", "error": "square", "token": "diamond", "logit": "star"}
_COLOURS = {"feature": "#f2a93b", "error": "#9e9e9e", "token": "#5b8def", "logit": "#43a047"}


def _example_texts(value: Any, limit: int) -> list[str]:
    """Example contexts as text: a ``UnitExamples`` (its top contexts), or a sequence of
    ``Context`` (``marked()``) or strings."""
    items = value.top if hasattr(value, "top") else value
    if isinstance(items, str):
        raise TypeError("examples: give a list of contexts per feature, not one string")
    return [item.marked() if hasattr(item, "marked") else str(item) for item in list(items)[:limit]]


def _layout(
    pruned: PrunedGraph,
) -> tuple[list[int], dict[int, tuple[float, float]], dict[int, dict[str, Any]]]:
    """Kept nodes, their (x, y), and per node its kind, layer, position and feature index."""
    graph = pruned.graph
    kept = pruned.node_mask.nonzero()[:, 0].tolist()
    info: dict[int, dict[str, Any]] = {}
    for node in kept:
        kind = graph.kind(node)
        layer, pos, index = None, graph.n_pos - 1, None
        if kind == "feature":
            layer, pos, index = graph.features[node].tolist()
        elif kind == "error":
            layer, pos = divmod(node - graph.n_features, graph.n_pos)
        elif kind == "token":
            pos = node - graph.token_node(0)
        row = {"token": -1, "logit": graph.n_layers}.get(kind, layer)
        info[node] = {"kind": kind, "layer": layer, "pos": pos, "index": index, "row": row}
    cells: dict[tuple[int, int], list[int]] = defaultdict(list)
    for node in kept:
        cells[info[node]["pos"], info[node]["row"]].append(node)
    positions = {}
    for (pos, row), nodes in cells.items():
        nodes.sort(key=lambda n: -float(pruned.node_influence[n]))
        spread = min(0.8, 0.12 * (len(nodes) - 1))
        for rank, node in enumerate(nodes):
            # the most influential in the middle, the others alternating outwards
            slot = (rank + 1) // 2 * (1 if rank % 2 else -1)
            step = spread / max(len(nodes) - 1, 1)
            positions[node] = (pos + slot * step, float(row))
    return kept, positions, info


def attribution_graph_figure(
    pruned: PrunedGraph,
    *,
    labels: FeatureLabels | None = None,
    replacement: Replacement | None = None,
    splits: Sequence[HeadSplit] | None = None,
    top_edges: int = 3,
    top_heads: int = 3,
    title: str | None = None,
) -> go.Figure:
    """The kept nodes and edges of ``pruned`` (module docstring). Every node point carries its
    graph node id as ``customdata``. Edge heads come from ``splits``
    (``circuits.tracing.kept_head_splits``) or are computed from ``replacement``.

    Example:
        >>> attribution_graph_figure(prune_graph(graph)).show()
    """
    return _figure_and_nodes(pruned, labels, replacement, splits, top_edges, top_heads, title, None, 0)[0]


def _figure_and_nodes(
    pruned: PrunedGraph,
    labels: FeatureLabels | None,
    replacement: Replacement | None,
    splits: Sequence[HeadSplit] | None,
    top_edges: int,
    top_heads: int,
    title: str | None,
    examples: Mapping[tuple[int, int], Any] | None,
    max_examples: int,
) -> tuple[go.Figure, list[dict[str, Any]]]:
    graph = pruned.graph
    labels = labels or {}
    kept, xy, info = _layout(pruned)
    rows, cols = graph.edges.indices()
    mask = pruned.edge_mask
    targets, sources = rows[mask].tolist(), cols[mask].tolist()
    weights = graph.edges.values()[mask].tolist()
    heads: list[list[tuple[int, int, float]]] = [[] for _ in weights]
    if splits is None and replacement is not None:
        splits = kept_head_splits(pruned, replacement)
    if splits is not None:
        if [(split.target, split.source) for split in splits] != list(zip(targets, sources, strict=True)):
            raise ValueError(
                "splits are not the head splits of the kept edges, in order; use kept_head_splits(pruned, replacement)"
            )
        heads = [split.top(top_heads) for split in splits]

    def name(node: int) -> str:
        text = graph.node_label(node)
        meta = info[node]
        label = labels.get((meta["layer"], meta["index"])) if meta["kind"] == "feature" else None
        return f"{text}: {label}" if label else text

    def head_text(split: list[tuple[int, int, float]]) -> str:
        return ", ".join(f"L{layer}.H{head} {share:+.3g}" for layer, head, share in split)

    incoming: dict[int, list[tuple[int, float, str]]] = defaultdict(list)
    outgoing: dict[int, list[tuple[int, float, str]]] = defaultdict(list)
    scale = max((abs(w) for w in weights), default=0.0) or 1.0
    segments: dict[tuple[bool, int], tuple[list, list]] = {}
    middles: tuple[list[float], list[float], list[str]] = ([], [], [])
    for target, source, weight, split in zip(targets, sources, weights, heads, strict=True):
        incoming[target].append((source, weight, head_text(split)))
        outgoing[source].append((target, weight, head_text(split)))
        (x0, y0), (x1, y1) = xy[source], xy[target]
        level = min(int(abs(weight) / scale * _WIDTH_LEVELS), _WIDTH_LEVELS - 1)
        xs, ys = segments.setdefault((weight >= 0, level), ([], []))
        xs += [x0, x1, None]
        ys += [y0, y1, None]
        middles[0].append((x0 + x1) / 2)
        middles[1].append((y0 + y1) / 2)
        text = f"{html.escape(name(source))} → {html.escape(name(target))}<br>weight {weight:+.4g}"
        if split:
            text += f"<br>heads: {html.escape(head_text(split))}"
        middles[2].append(text)

    figure = go.Figure()
    for (positive, level), (xs, ys) in sorted(segments.items()):
        group = "positive" if positive else "negative"
        figure.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": "royalblue" if positive else "crimson", "width": 0.7 + 1.5 * level},
                opacity=0.25 + 0.15 * level,
                hoverinfo="skip",
                name=f"{group} edges",
                legendgroup=group,
                showlegend=not any(trace.legendgroup == group for trace in figure.data),
            )
        )
    figure.add_trace(
        go.Scatter(
            x=middles[0],
            y=middles[1],
            mode="markers",
            marker={"size": 5, "color": "rgba(0,0,0,0.12)"},
            hovertext=middles[2],
            hoverinfo="text",
            name="edge midpoints",
            showlegend=False,
        )
    )

    total = float(pruned.node_influence.sum()) or 1.0
    nodes: list[dict[str, Any]] = []
    hover = []
    for node in kept:
        meta = info[node]
        record = {
            "node": node,
            "name": name(node),
            "kind": meta["kind"],
            "layer": meta["layer"],
            "pos": meta["pos"],
            "token": graph.token_strings[meta["pos"]],
            "influence": float(pruned.node_influence[node]) / total,
            "activation": float(graph.activations[node]) if meta["kind"] == "feature" else None,
            "value": float(graph.values[node]),
            "incoming": [
                [name(s), w, h] for s, w, h in sorted(incoming[node], key=lambda e: -abs(e[1]))[:top_edges]
            ],
            "outgoing": [
                [name(t), w, h] for t, w, h in sorted(outgoing[node], key=lambda e: -abs(e[1]))[:top_edges]
            ],
            "examples": [],
        }
        if examples is not None and meta["kind"] == "feature":
            found = examples.get((meta["layer"], meta["index"]))
            record["examples"] = _example_texts(found, max_examples) if found is not None else []
        nodes.append(record)
        lines = [f"<b>{html.escape(record['name'])}</b>", f"influence {record['influence']:.3g}"]
        if record["activation"] is not None:
            lines.append(f"activation {record['activation']:.4g}")
        for key, arrow in (("incoming", "←"), ("outgoing", "→")):
            lines += [f"{arrow} {html.escape(other)} {w:+.3g}" for other, w, _ in record[key]]
        hover.append("<br>".join(lines))
    influence = [record["influence"] for record in nodes]
    peak = max(influence, default=0.0) or 1.0
    figure.add_trace(
        go.Scatter(
            x=[xy[n][0] for n in kept],
            y=[xy[n][1] for n in kept],
            mode="markers",
            marker={
                "size": [9 + 16 * (value / peak) ** 0.5 for value in influence],
                "symbol": [_SYMBOLS[info[n]["kind"]] for n in kept],
                "color": [_COLOURS[info[n]["kind"]] for n in kept],
                "line": {"color": "black", "width": 1},
            },
            customdata=kept,
            hovertext=hover,
            hoverinfo="text",
            name="nodes",
            showlegend=False,
        )
    )
    n_layers, n_pos = graph.n_layers, graph.n_pos
    figure.update_layout(
        title=title
        or (
            f"{graph.model_name}: {len(kept)} of {graph.n_nodes} nodes, {len(weights)} edges "
            f"(replacement {pruned.replacement_score:.3f}, completeness {pruned.completeness_score:.3f})"
        ),
        plot_bgcolor="white",
        height=260 + 34 * (n_layers + 2),
        width=max(700, 110 * n_pos + 200),
        hovermode="closest",
        xaxis={
            "range": [-0.6, n_pos - 0.4],
            "tickvals": list(range(n_pos)),
            "ticktext": [f"{p}: {t!r}"[:24] for p, t in enumerate(graph.token_strings)],
            "showgrid": False,
            "zeroline": False,
            "title": "prompt position",
        },
        yaxis={
            "range": [-1.6, n_layers + 0.6],
            "tickvals": [-1, *range(n_layers), n_layers],
            "ticktext": ["tokens", *map(str, range(n_layers)), "logits"],
            "showgrid": False,
            "zeroline": False,
            "title": "layer",
        },
    )
    return figure, nodes


_CSS = """
body { font-family: sans-serif; margin: 12px; }
#layout { display: flex; gap: 16px; align-items: flex-start; }
#details { min-width: 320px; max-width: 420px; font-size: 13px; position: sticky; top: 8px; }
#details h3 { margin: 4px 0; font-size: 15px; }
#details table { border-collapse: collapse; width: 100%; }
#details td { padding: 1px 4px; border-bottom: 1px solid #eee; vertical-align: top; }
#details .example { font-family: monospace; white-space: pre-wrap; margin: 3px 0;
  padding: 3px; background: #f7f7f7; }
#details .example b { background: #ffd27f; }
.pos { color: royalblue; } .neg { color: crimson; }
"""

_SCRIPT = """
var NODES = JSON.parse(document.getElementById('attribution-nodes').textContent);
function cell(row, text, cls) {
  var td = document.createElement('td'); td.textContent = text; if (cls) td.className = cls;
  row.appendChild(td);
}
function edgeTable(panel, title, edges) {
  var h = document.createElement('h3'); h.textContent = title; panel.appendChild(h);
  if (!edges.length) { var p = document.createElement('div'); p.textContent = 'none kept';
    panel.appendChild(p); return; }
  var table = document.createElement('table');
  edges.forEach(function (e) {
    var row = document.createElement('tr');
    cell(row, e[0]); cell(row, (e[1] >= 0 ? '+' : '') + e[1].toPrecision(3), e[1] >= 0 ? 'pos' : 'neg');
    cell(row, e[2]); table.appendChild(row);
  });
  panel.appendChild(table);
}
window.mechinterpShowNode = function (i) {
  var n = NODES[i], panel = document.getElementById('details');
  panel.textContent = '';
  var h = document.createElement('h3'); h.textContent = n.name; panel.appendChild(h);
  var facts = [['kind', n.kind], ['position', n.pos + ' (' + JSON.stringify(n.token) + ')'],
    ['influence', n.influence.toPrecision(3)], ['value', n.value.toPrecision(4)]];
  if (n.layer !== null) facts.splice(1, 0, ['layer', n.layer]);
  if (n.activation !== null) facts.push(['activation', n.activation.toPrecision(4)]);
  var table = document.createElement('table');
  facts.forEach(function (f) { var row = document.createElement('tr'); cell(row, f[0]);
    cell(row, String(f[1])); table.appendChild(row); });
  panel.appendChild(table);
  edgeTable(panel, 'strongest incoming edges', n.incoming);
  edgeTable(panel, 'strongest outgoing edges', n.outgoing);
  if (n.examples.length) {
    var e = document.createElement('h3'); e.textContent = 'top activations'; panel.appendChild(e);
    n.examples.forEach(function (text) {
      var div = document.createElement('div'); div.className = 'example';
      text.split(/(<<.*?>>)/).forEach(function (part) {
        if (part.startsWith('<<') && part.endsWith('>>')) {
          var b = document.createElement('b'); b.textContent = part.slice(2, -2); div.appendChild(b);
        } else if (part) { div.appendChild(document.createTextNode(part)); }
      });
      panel.appendChild(div);
    });
  }
};
var plot = document.getElementById('{plot_id}');
var nodeTrace = plot.data.length - 1;
plot.on('plotly_click', function (event) {
  var point = event.points.find(function (p) { return p.curveNumber === nodeTrace; });
  if (point) window.mechinterpShowNode(point.pointNumber);
});
"""


def write_attribution_graph_html(
    pruned: PrunedGraph,
    path: str | Path,
    *,
    labels: FeatureLabels | None = None,
    examples: Mapping[tuple[int, int], Sequence[Any] | Any] | None = None,
    replacement: Replacement | None = None,
    splits: Sequence[HeadSplit] | None = None,
    top_edges: int = 5,
    top_heads: int = 3,
    max_examples: int = 5,
    title: str | None = None,
) -> Path:
    """A self-contained interactive page of ``pruned`` (module docstring): plotly.js and the
    page's own script are inlined, so it opens offline. Written atomically.

    Args:
        labels: ``(layer, index) -> text`` for features (e.g. ``mechinterp.explain``
            explanations); the same mapping ``write_attribution_graph(labels=...)`` writes as ``clerp``.
        examples: ``(layer, index) -> contexts`` shown when a feature is clicked: a
            ``mechinterp.explain`` ``UnitExamples`` (its top contexts), a list of ``Context``
            (``<<marked>>`` text) or a list of strings.
        replacement: the prompt's ``Replacement``, to show each edge's attention heads (or
            ``splits``: ``circuits.tracing.kept_head_splits(pruned, replacement)``, computed once
            for several outputs).
        top_edges: edges in and out listed per node; ``top_heads``: heads per edge.

    Example:
        >>> write_attribution_graph_html(pruned, "cat.html", replacement=Replacement(model, tc, graph.tokens[None]))
        >>> write_attribution_graph_html(pruned, "cat.html", examples={(1, 17): ["the <<cat>> sat"]})
    """
    figure, nodes = _figure_and_nodes(
        pruned, labels, replacement, splits, top_edges, top_heads, title, examples, max_examples
    )
    plot = figure.to_html(
        include_plotlyjs=True, full_html=False, div_id="attribution-graph", post_script=_SCRIPT
    )
    data = json.dumps(nodes).replace("</", "<\\/")
    graph = pruned.graph
    heading = html.escape(f"Attribution graph of {graph.model_name}: {''.join(graph.token_strings)!r}")
    page = (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{heading}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h2>{heading}</h2>\n"
        f"<script type='application/json' id='attribution-nodes'>{data}</script>\n"
        "<div id='layout'>\n<div>" + plot + "</div>\n"
        "<div id='details'><h3>Click a node</h3>its label, activation, influence, strongest edges and "
        "top activations appear here; hover an edge's midpoint for its weight and heads.</div>\n"
        "</div>\n</body>\n</html>\n"
    )
    return write_text_atomically(path, page)
