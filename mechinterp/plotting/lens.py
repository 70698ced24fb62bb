"""Figures for looking inside: logit-lens heatmaps and trajectories, DLA, attention
patterns, probe accuracy per layer."""

from __future__ import annotations

from typing import Literal

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechinterp.lens.dla import DLAResult
from mechinterp.lens.heads import AttentionPatterns
from mechinterp.lens.logit_lens import LensResult
from mechinterp.probing.probes import ProbeResult

LensValue = Literal["kl", "target_prob", "target_rank", "top_prob"]


def lens_heatmap(lens: LensResult, *, example: int = 0, value: LensValue = "kl") -> go.Figure:
    """Layer x position heatmap of one example; hovering a cell shows that layer's top tokens."""
    data = {
        "kl": (lens.kl_to_final, "KL(final || layer)"),
        "top_prob": (lens.top_probs[..., 0], "top-1 probability"),
        "target_prob": (lens.target_prob, "target probability"),
        "target_rank": (lens.target_rank, "target rank"),
    }[value]
    if data[0] is None:
        raise ValueError(f"value={value!r} needs targets: call logit_lens(..., targets=[...])")
    z = data[0][:, example].float().numpy()
    hover = [
        [", ".join(repr(t) for t in position) for position in layer[example]]
        for layer in lens.top_strings_table
    ]
    positions = [f"{i}: {token}" for i, token in enumerate(lens.str_tokens[example])]
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=positions,
            y=lens.layers,
            customdata=hover,
            colorscale="Viridis",
            hovertemplate="layer %{y}<br>%{x}<br>"
            + data[1]
            + " %{z:.3f}<br>top: %{customdata}<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"logit lens: {data[1]}",
        xaxis_title="position",
        yaxis_title="layer",
        height=300 + 14 * len(lens.layers),
    )
    return figure


def lens_trajectory(lens: LensResult, *, example: int = 0, position: int = -1) -> go.Figure:
    """Per layer at one position: KL to the final distribution and, with targets, the target's
    probability and rank (log scale)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("KL(final || layer)", "target"))
    figure.add_trace(
        go.Scatter(x=lens.layers, y=lens.kl_to_final[:, example, position].numpy(), name="KL"), row=1, col=1
    )
    if lens.target_prob is not None:
        figure.add_trace(
            go.Scatter(
                x=lens.layers, y=lens.target_prob[:, example, position].numpy(), name="target probability"
            ),
            row=1,
            col=2,
        )
        figure.add_trace(
            go.Scatter(
                x=lens.layers,
                y=lens.target_rank[:, example, position].numpy() + 1,
                name="target rank + 1",
            ),
            row=1,
            col=2,
        )
        figure.update_yaxes(type="log", row=1, col=2)
    token = lens.str_tokens[example][position]
    figure.update_layout(title=f"logit lens at position {position} ({token!r})")
    return figure


def dla_heatmap(dla: DLAResult, *, example: int | None = None) -> go.Figure:
    """Layer x head heatmap of per-head attributions (example mean unless ``example``)."""
    per_head = dla.by_head()
    z = per_head.mean(-1) if example is None else per_head[..., example]
    scale = float(z.abs().max()) or 1.0
    figure = go.Figure(
        go.Heatmap(
            z=z.numpy(),
            x=[f"H{h}" for h in range(dla.n_heads)],
            y=[f"L{layer}" for layer in range(dla.n_layers)],
            colorscale="RdBu",
            reversescale=True,
            zmin=-scale,
            zmax=scale,
            hovertemplate="%{y} %{x}<br>%{z:.4f}<extra></extra>",
        )
    )
    figure.update_layout(title="direct logit attribution per head", yaxis={"autorange": "reversed"})
    return figure


def dla_bar(dla: DLAResult, *, example: int | None = None) -> go.Figure:
    """Per-layer attention and MLP attributions (biases included), grouped bars."""
    layers = dla.by_layer()
    figure = go.Figure()
    for name, values in layers.items():
        y = values.mean(-1) if example is None else values[:, example]
        figure.add_trace(go.Bar(x=[f"L{layer}" for layer in range(dla.n_layers)], y=y.numpy(), name=name))
    total = dla.logit_diff.mean() if example is None else dla.logit_diff[example]
    figure.update_layout(
        barmode="group", title=f"direct logit attribution per layer (logit diff {total:.3f})"
    )
    return figure


def attention_heatmap(patterns: AttentionPatterns) -> go.Figure:
    """One query x key panel per chosen head, token labels on both axes."""
    labels = [f"{i}: {t}" for i, t in enumerate(patterns.str_tokens)]
    titles = [f"L{layer} H{head}" for layer, head in patterns.heads]
    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, shared_yaxes=True)
    for i, pattern in enumerate(patterns.patterns):
        figure.add_trace(
            go.Heatmap(
                z=pattern.numpy(),
                x=labels,
                y=labels,
                zmin=0,
                zmax=1,
                colorscale="Blues",
                showscale=i == 0,
                hovertemplate="query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>",
            ),
            row=1,
            col=i + 1,
        )
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(title="attention patterns", height=250 + 18 * len(labels))
    return figure


def probe_accuracy(result: ProbeResult) -> go.Figure:
    """Per-layer test score of the probes, with the shuffled-label and control-task probes
    beside them, the selectivity (test accuracy minus control task) as bars, and the chance
    level."""
    layers = [f"L{layer}" for layer in result.layers]
    name = "accuracy" if result.kind == "logistic" else "R^2"
    split = "type-disjoint" if result.split == "types" else "random"
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=layers, y=result.score["test"].numpy(), name=f"probe (test {name})", mode="lines+markers"
        )
    )
    figure.add_trace(
        go.Scatter(
            x=layers, y=result.shuffled.numpy(), name="shuffled labels", mode="lines", line={"dash": "dot"}
        )
    )
    if result.control is not None:
        figure.add_trace(
            go.Scatter(
                x=layers, y=result.control.numpy(), name="control task", mode="lines", line={"dash": "dash"}
            )
        )
        figure.add_trace(go.Bar(x=layers, y=result.selectivity.numpy(), name="selectivity", opacity=0.35))
    if result.kind == "logistic":
        figure.add_hline(y=result.chance, line={"color": "gray", "width": 1}, annotation_text="chance")
    figure.update_layout(
        title=f"probe {name} per layer ({result.model_name}, {result.hook}, {split} split)",
        yaxis_title=name,
    )
    return figure
