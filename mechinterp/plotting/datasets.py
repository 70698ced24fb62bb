"""Figures and an offline HTML report for corpus and model diffing (``mechinterp.datasets``).

Example:
    >>> corpus_diff_figure(diff).show()
    >>> write_diff_report("runs/diff/report.html", diff=diff, hypothesis=check, model_diff=model_diff)
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from mechinterp.datasets import CorpusDescription, CorpusDiff, Crosscoder, HypothesisCheck, ModelDiff
from mechinterp.plotting.explain import _highlight

KIND_COLOURS = {"hypothesis": "#1f77b4", "baseline": "#aaaaaa", "shuffled": "#d62728"}


def corpus_diff_figure(diff: CorpusDiff, *, n_labels: int = 10) -> go.Figure:
    """Volcano plot: each feature's log-odds ratio (B vs A, discovery split) against its
    z-score, coloured by whether the difference replicates on held-out texts; the ``n_labels``
    largest ``|z|`` are labelled."""
    frame = diff.to_frame()
    figure = go.Figure()
    groups = (
        [
            ("replicates", frame["replicates"].astype(bool)),
            ("does not replicate", ~frame["replicates"].astype(bool)),
        ]
        if diff.has_holdout
        else [("features", np.ones(len(frame), dtype=bool))]
    )
    labelled = set(frame.loc[frame["z"].abs().sort_values(ascending=False).index[:n_labels], "feature"])
    for name, rows in groups:
        part = frame[rows]
        hover = [
            f"feature {f}<br>{diff.labels[0]} {a:.3%}, {diff.labels[1]} {b:.3%}"
            + (f"<br>{html.escape(str(e))}" if isinstance(e, str) else "")
            for f, a, b, e in zip(
                part["feature"],
                part["freq_a"],
                part["freq_b"],
                part.get("explanation", [None] * len(part)),
                strict=True,
            )
        ]
        figure.add_trace(
            go.Scatter(
                x=part["log_odds"],
                y=part["z"],
                mode="markers+text",
                text=[str(f) if f in labelled else "" for f in part["feature"]],
                textposition="top center",
                hovertext=hover,
                hoverinfo="text",
                name=name,
                marker={"color": "#2ca02c" if name == "replicates" else "#999999", "size": 7},
            )
        )
    for z in (diff.z_threshold, -diff.z_threshold):
        figure.add_hline(y=z, line={"dash": "dot", "color": "grey"})
    figure.update_layout(
        title=f"features of {diff.hook_name}: {diff.labels[1]} vs {diff.labels[0]} (log-odds of firing per {diff.level})",
        xaxis_title=f"log-odds ratio ({diff.labels[1]} over {diff.labels[0]})",
        yaxis_title="z",
        height=480,
    )
    return figure


def hypothesis_figure(check: HypothesisCheck) -> go.Figure:
    """AUC of each description (hypothesis, baselines, shuffled words) at separating the
    corpora; 0.5 is chance."""
    frame = check.to_frame()
    figure = go.Figure(
        go.Bar(
            x=frame["auc"],
            y=frame["hypothesis"],
            orientation="h",
            marker={"color": [KIND_COLOURS[k] for k in frame["kind"]]},
            text=[f"{k}, p={p:.3g}" for k, p in zip(frame["kind"], frame["p_value"], strict=True)],
            hovertemplate="%{y}<br>AUC %{x:.3f}<br>%{text}<extra></extra>",
        )
    )
    figure.add_vline(x=0.5, line={"dash": "dot", "color": "grey"})
    figure.update_layout(
        title=f"does the description pick out {check.labels[1]} over {check.labels[0]}? (scorer: {check.scorer})",
        xaxis={"title": "AUC", "range": [0, 1]},
        yaxis={"autorange": "reversed"},
        height=120 + 40 * len(frame),
    )
    return figure


def crosscoder_figure(crosscoder: Crosscoder) -> go.Figure:
    """Histogram of the latents' relative decoder norms ``||d_B|| / (||d_A|| + ||d_B||)``:
    the mass at 0 and 1 is what only one model uses."""
    ratio = crosscoder.relative_norms().numpy()
    figure = go.Figure(go.Histogram(x=ratio, xbins={"start": 0, "end": 1.0001, "size": 0.02}))
    figure.update_layout(
        title=f"crosscoder at {crosscoder.hook_name}: {crosscoder.labels[0]} (0) ... {crosscoder.labels[1]} (1)",
        xaxis_title="relative decoder norm",
        yaxis={"title": "latents", "type": "log"},
        height=380,
    )
    return figure


def _table(frame, columns) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            value = row[c]
            if isinstance(value, float):
                text = f"{value:.4g}" if np.isfinite(value) else "–"
            else:
                text = html.escape(str(value)) if value is not None else "–"
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def diff_report(
    *,
    diff: CorpusDiff | None = None,
    description: CorpusDescription | None = None,
    hypothesis: HypothesisCheck | None = None,
    model_diff: ModelDiff | None = None,
    n_features: int = 20,
    title: str = "dataset and model diffing",
) -> str:
    """A self-contained offline HTML page (plotly.js inlined once) with whichever results are given."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:75em}.muted{color:#888;font-size:85%}",
        ".ctx{font-family:monospace;white-space:pre-wrap;margin:.2em 0;border-bottom:1px solid #eee}",
        "table{border-collapse:collapse;font-size:90%}td,th{padding:.2em .6em;border-bottom:1px solid #ddd}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    plotly_js = True

    def figure_html(figure: go.Figure) -> str:
        nonlocal plotly_js
        out = figure.to_html(full_html=False, include_plotlyjs=plotly_js)
        plotly_js = False
        return out

    if diff is not None:
        parts.append(f"<h2>Corpus diff: {html.escape(diff.labels[1])} vs {html.escape(diff.labels[0])}</h2>")
        parts.append("<p>" + ", ".join(f"{html.escape(k)}: {v}" for k, v in diff.summary().items()) + "</p>")
        parts.append(figure_html(corpus_diff_figure(diff)))
        frame = diff.to_frame()
        columns = [
            "feature",
            "freq_a",
            "freq_b",
            "log_odds",
            "ci_low",
            "ci_high",
            "z",
            "holdout_z",
            "replicates",
        ]
        columns += [c for c in ("explanation", "score", "shuffled_score") if c in frame]
        parts.append(f"<h3>top {n_features} features over-represented in {html.escape(diff.labels[1])}</h3>")
        parts.append(_table(frame.head(n_features), columns))
        parts.append(f"<h3>top {n_features} features over-represented in {html.escape(diff.labels[0])}</h3>")
        parts.append(_table(frame.iloc[::-1].head(n_features), columns))
    if description is not None:
        parts.append("<h2>Corpus description</h2>")
        parts.append(_table(description.to_frame(), list(description.to_frame().columns)))
        for examples in description.examples:
            parts.append(f"<h4>{html.escape(examples.label)}</h4>")
            parts += [_highlight(c, examples.max_activation) for c in examples.top[:3]]
    if hypothesis is not None:
        parts.append("<h2>Hypothesis check</h2>")
        parts.append(figure_html(hypothesis_figure(hypothesis)))
        parts.append(_table(hypothesis.to_frame(), list(hypothesis.to_frame().columns)))
        parts.append(f"<p>margin over the best baseline (AUC): {hypothesis.margin():+.3f}</p>")
    if model_diff is not None:
        parts.append("<h2>Model diff (crosscoder)</h2>")
        parts.append(figure_html(crosscoder_figure(model_diff.crosscoder)))
        frame = model_diff.to_frame()
        parts.append(_table(frame, [c for c in frame.columns if c != "top_context"]))
        for examples in model_diff.examples:
            parts.append(f"<h4>{html.escape(examples.label)}</h4>")
            parts += [_highlight(c, examples.max_activation) for c in examples.top[:3]]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_diff_report(path: str | Path, **results) -> Path:
    """Write ``diff_report(**results)`` to ``path`` (works offline: plotly.js is inlined)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(diff_report(**results), encoding="utf-8")
    return path
