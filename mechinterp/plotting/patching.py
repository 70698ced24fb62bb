"""Heatmaps of activation-patching results."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechinterp.patching.compare import Comparison
from mechinterp.patching.result import PatchResult


def patch_heatmap(
    result: PatchResult, *, normalized: bool | None = None, title: str | None = None
) -> go.Figure:
    """A heatmap of a 2-D result (``[layer, pos]``, ``[layer, head]``, ...); a 3-D result
    (``[layer, pos, head]``) gives one panel per value of its last axis.

    Values are the example mean, normalised (0 = unpatched base run, 1 = source run) when
    the result has a source run, unless ``normalized=False``. Position axes are labelled
    with their tokens. Colour scale: diverging, centred on 0.
    """
    normalized = result.source is not None if normalized is None else normalized
    values = (result.normalized() if normalized else result.mean()).float().cpu()
    if values.ndim not in (2, 3):
        raise ValueError(f"patch_heatmap draws 2-D or 3-D results, got axes {result.axes}")
    rows_axis, cols_axis = result.axes[0], result.axes[1]
    panels = [values] if values.ndim == 2 else [values[..., i] for i in range(values.shape[-1])]
    panel_titles = [""] if values.ndim == 2 else result.labels[result.axes[2]]
    scale = float(values.abs().max()) or 1.0
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=panel_titles, shared_yaxes=True)
    for i, panel in enumerate(panels):
        figure.add_trace(
            go.Heatmap(
                z=panel.numpy(),
                x=result.labels[cols_axis],
                y=result.labels[rows_axis],
                zmin=-scale,
                zmax=scale,
                colorscale="RdBu",
                reversescale=True,
                showscale=i == 0,
                hovertemplate=f"{rows_axis} %{{y}}<br>{cols_axis} %{{x}}<br>value %{{z:.4f}}<extra></extra>",
            ),
            row=1,
            col=i + 1,
        )
    kind = result.metadata.get("kind", "")
    default_title = (
        f"{kind} patching ({'normalized' if normalized else result.metadata.get('metric', 'metric')})"
    )
    figure.update_layout(title=title or default_title, height=400 + 12 * len(result.labels[rows_axis]))
    figure.update_yaxes(autorange="reversed", title_text=rows_axis, col=1)
    figure.update_xaxes(title_text=cols_axis)
    return figure


def comparison_scatter(comparison: Comparison, *, title: str | None = None) -> go.Figure:
    """Scatter of one map against the other, one point per cell (hover: the cell), with the
    diagonal and the correlations in the title."""
    x, y = comparison.reference.numpy(), comparison.estimate.numpy()
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=[low, high], y=[low, high], mode="lines", name="y = x", line={"dash": "dot", "color": "gray"}
        )
    )
    figure.add_trace(
        go.Scatter(
            x=x,
            y=y,
            mode="markers",
            text=comparison.labels,
            name="cells",
            hovertemplate="%{text}<br>x %{x:.4f}<br>y %{y:.4f}<extra></extra>",
        )
    )
    default = (
        f"{comparison.names[1]} vs {comparison.names[0]}: Pearson {comparison.pearson:.3f}, "
        f"Spearman {comparison.spearman:.3f}, top-{comparison.top_k} overlap "
        f"{comparison.top_k_overlap:.0%}"
    )
    figure.update_layout(
        title=title or default, xaxis_title=comparison.names[0], yaxis_title=comparison.names[1]
    )
    return figure
