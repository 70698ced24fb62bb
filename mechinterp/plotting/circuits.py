"""Figures of circuits and their evaluations: the circuit graph, faithfulness curves, ROC curves,
and the circuit graph as a self-contained HTML page.

Example:
    >>> circuit_figure(circuit).show()
    >>> write_circuit_html(circuit, "runs/ioi/circuit.html")   # opens offline in a browser
    >>> faithfulness_figure(curve).show(); roc_figure(roc_against(circuit, reference)).show()
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from circuits.circuit import Circuit
from circuits.evaluate import FaithfulnessCurve, RocCurve
from circuits.export import write_text_atomically
from circuits.graph import Graph, Node

_WIDTH_LEVELS = 4  # edges are drawn in this many widths per sign (one trace each)
_CHANNEL_OFFSET = {"q": -0.18, "k": 0.0, "v": 0.18}  # q/k/v edges end side by side on a head


def _position(node: Node, graph: Graph) -> tuple[float, float]:
    """(x, y): heads at (head, layer), an MLP above its layer's heads, centred; the input below
    layer 0, the logits above the last layer."""
    middle = (graph.n_heads - 1) / 2
    if node.kind == "head":
        return float(node.head), float(node.layer)
    if node.kind == "mlp":
        return middle, node.layer + 0.5
    return middle, -1.0 if node.kind == "input" else float(graph.n_layers)


def add_edge_hover_points(figure: go.Figure, xs: list, ys: list, texts: list, *, name: str) -> None:
    """Faint markers at the edges' midpoints that carry each edge's hover text (plotly shows
    no hover on lines)."""
    figure.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            marker={"size": 6, "color": "rgba(0,0,0,0.15)"},
            hovertext=texts,
            hoverinfo="text",
            name=name,
            showlegend=False,
        )
    )


def circuit_figure(circuit: Circuit, *, title: str | None = None) -> go.Figure:
    """The in-graph edges of ``circuit`` on a layer (y) by head (x) grid.

    Edge colour is the score's sign (blue positive, red negative) and width grows with
    ``|score|``; q, k and v edges end side by side on their head. Hovering a node shows its
    name and summed in-graph edge scores; hovering an edge's midpoint shows its name, channel
    and score.
    """
    graph = circuit.graph
    edges = circuit.edges_in_graph()
    scores = [float(circuit.scores[graph.edge_index[edge]]) for edge in edges]
    scale = max((abs(s) for s in scores), default=0.0) or 1.0
    figure = go.Figure()
    segments: dict[tuple[bool, int], tuple[list, list]] = {}
    midpoints: tuple[list[float], list[float], list[str]] = ([], [], [])
    for edge, score in zip(edges, scores, strict=True):
        x0, y0 = _position(edge.source, graph)
        x1, y1 = _position(edge.target, graph)
        x1 += _CHANNEL_OFFSET.get(edge.channel, 0.0)
        level = min(int(abs(score) / scale * _WIDTH_LEVELS), _WIDTH_LEVELS - 1)
        xs, ys = segments.setdefault((score >= 0, level), ([], []))
        xs += [x0, x1, None]
        ys += [y0, y1, None]
        midpoints[0].append((x0 + x1) / 2)
        midpoints[1].append((y0 + y1) / 2)
        midpoints[2].append(f"{edge.name}<br>channel {edge.channel}<br>score {score:.4g}")
    for (positive, level), (xs, ys) in sorted(segments.items()):
        figure.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": "royalblue" if positive else "crimson", "width": 1 + 2 * level},
                opacity=0.7,
                hoverinfo="skip",
                name="positive score" if positive else "negative score",
                legendgroup="positive" if positive else "negative",
                showlegend=not any(
                    trace.legendgroup == ("positive" if positive else "negative") for trace in figure.data
                ),
            )
        )
    add_edge_hover_points(figure, *midpoints, name="edges")
    totals = {node: [0.0, 0.0] for node in circuit.nodes_in_graph()}  # [into, out of]
    for edge, score in zip(edges, scores, strict=True):
        totals[edge.target][0] += score
        totals[edge.source][1] += score
    others = [node for node in graph.nodes if node not in totals]
    figure.add_trace(
        go.Scatter(
            x=[_position(node, graph)[0] for node in others],
            y=[_position(node, graph)[1] for node in others],
            mode="markers",
            marker={"size": 10, "color": "rgba(0,0,0,0.12)"},
            hovertext=[f"{node.name} (not in the circuit)" for node in others],
            hoverinfo="text",
            name="other nodes",
            showlegend=False,
        )
    )
    nodes = sorted(totals, key=graph.nodes.index)
    positions = [_position(node, graph) for node in nodes]
    figure.add_trace(
        go.Scatter(
            x=[x for x, _ in positions],
            y=[y for _, y in positions],
            mode="markers+text",
            marker={"size": 34, "color": "white", "line": {"color": "black", "width": 1.5}},
            text=[node.name for node in nodes],
            textfont={"size": 10},
            hovertext=[
                f"{node.name} ({node.kind})<br>in-graph score in {totals[node][0]:.4g}, out {totals[node][1]:.4g}"
                for node in nodes
            ],
            hoverinfo="text",
            name="nodes",
            showlegend=False,
        )
    )
    figure.update_layout(
        title=title or f"{graph.model_name}: circuit of {circuit.n_edges} edges",
        plot_bgcolor="white",
        height=300 + 110 * graph.n_layers,
        width=max(600, 90 * graph.n_heads + 250),
        xaxis={
            "title": "head",
            "showgrid": False,
            "zeroline": False,
            "dtick": 1,
            "range": [-0.7, graph.n_heads - 0.3],
        },
        yaxis={
            "range": [-1.5, graph.n_layers + 0.5],
            "title": "layer",
            "showgrid": False,
            "zeroline": False,
            "tickvals": [-1, *range(graph.n_layers), graph.n_layers],
            "ticktext": ["input", *map(str, range(graph.n_layers)), "logits"],
        },
    )
    return figure


def write_circuit_html(circuit: Circuit, path: str | Path, *, title: str | None = None) -> Path:
    """A self-contained interactive page of the in-graph edges (``circuit_figure``): plotly.js
    is inlined, so it opens offline. Written atomically, like every ``circuits.write`` format.

    Example:
        >>> write_circuit_html(circuit, "runs/ioi/circuit.html")
    """
    html = circuit_figure(circuit, title=title).to_html(include_plotlyjs=True, full_html=True)
    return write_text_atomically(path, html)


def faithfulness_figure(curve: FaithfulnessCurve, *, title: str | None = None) -> go.Figure:
    """Faithfulness against the number of edges kept, with the curve's area in the title."""
    figure = go.Figure(
        go.Scatter(
            x=curve.counts,
            y=curve.faithfulness.tolist(),
            mode="lines+markers",
            hovertemplate="%{x} edges<br>faithfulness %{y:.3f}<extra></extra>",
        )
    )
    figure.add_hline(y=1.0, line_dash="dot", line_color="grey")
    figure.update_layout(
        title=title or f"Faithfulness (area {curve.area:.3f})",
        xaxis_title=f"edges kept (of {curve.n_edges_total})",
        yaxis_title="faithfulness",
    )
    return figure


def roc_figure(roc: RocCurve, *, title: str | None = None) -> go.Figure:
    """The ROC curve against a reference circuit, the chance diagonal, AUC in the title."""
    figure = go.Figure(
        go.Scatter(
            x=roc.fpr.tolist(),
            y=roc.tpr.tolist(),
            mode="lines+markers",
            customdata=roc.thresholds.tolist(),
            hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<br>threshold %{customdata:.4g}<extra></extra>",
            name="ROC",
        )
    )
    figure.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance")
    )
    figure.update_layout(
        title=title
        or f"ROC against the reference (AUC {roc.auc:.3f}; {roc.n_positive} in, {roc.n_negative} out)",
        xaxis={"title": "false positive rate", "range": [0, 1]},
        yaxis={"title": "true positive rate", "range": [0, 1.02]},
    )
    return figure
