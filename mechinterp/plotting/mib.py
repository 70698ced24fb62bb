"""Figure of MIB's method comparison: faithfulness over circuit sizes, one line per method.

Example:
    >>> table = circuits.compare_methods(model, pairs, pairs.metric(), graph, task="ioi")
    >>> mib_figure(table).show()
"""

from __future__ import annotations

from typing import Literal

import plotly.graph_objects as go

from circuits.mib import MethodComparison


def mib_figure(
    comparison: MethodComparison,
    *,
    ranking: Literal["magnitude", "signed"] = "magnitude",
    title: str | None = None,
) -> go.Figure:
    """Faithfulness against the fraction of edges kept (log axis, MIB's grid), one line per
    method, with CPR and CMD in the legend. ``ranking``: the CMD curves (edges ranked by
    magnitude) or the CPR curves (ranked by sign)."""
    if ranking not in ("magnitude", "signed"):
        raise ValueError(f"ranking must be 'magnitude' or 'signed', got {ranking!r}")
    figure = go.Figure()
    for score in comparison.scores:
        curve = score.cmd_curve if ranking == "magnitude" else score.cpr_curve
        figure.add_trace(
            go.Scatter(
                x=curve.fractions,
                y=curve.faithfulness.tolist(),
                customdata=curve.kept,
                mode="lines+markers",
                name=f"{score.method} (CPR {score.cpr:.2f}, CMD {score.cmd:.2f})",
                hovertemplate="%{x:.3%} of edges (%{customdata} kept after pruning)<br>"
                "faithfulness %{y:.3f}<extra></extra>",
            )
        )
    figure.add_hline(y=1.0, line_dash="dot", line_color="grey")
    task = f" on {comparison.task}" if comparison.task else ""
    figure.update_layout(
        title=title or f"Faithfulness over circuit sizes{task} (edges ranked by {ranking})",
        xaxis={"title": "fraction of edges kept", "type": "log", "tickformat": ".1%"},
        yaxis_title="faithfulness",
    )
    return figure
