"""Figures and an offline HTML dashboard for scored explanations (``mechinterp.explain``).

Example:
    >>> explanation_scores(scores).show()
    >>> write_explanation_dashboard(scores, "runs/explain/dashboard.html")
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechinterp.explain.examples import CONTEXT_KINDS, Context
from mechinterp.explain.scorer_check import ScorerCheck
from mechinterp.explain.scoring import METRICS, ExplanationScores


def explanation_scores(scores: ExplanationScores) -> go.Figure:
    """Per method, every unit's score (explanation) against its shuffled baseline; points
    above the diagonal are explanations that carry information about their unit."""
    frame = scores.to_frame()
    methods = list(dict.fromkeys(frame["method"]))
    figure = make_subplots(rows=1, cols=len(methods), subplot_titles=methods)
    for column, method in enumerate(methods, start=1):
        metric = METRICS[method][0]
        rows = frame[frame["method"] == method]
        figure.add_trace(
            go.Scatter(
                x=rows[f"baseline_{metric}"],
                y=rows[metric],
                mode="markers",
                text=rows["label"] + ": " + rows["explanation"].fillna("(none)"),
                hovertemplate="%{text}<br>score %{y:.3f}<br>shuffled %{x:.3f}<extra></extra>",
                name=method,
                showlegend=False,
            ),
            row=1,
            col=column,
        )
        low, high = (-1, 1) if metric == "correlation" else (0, 1)
        figure.add_trace(
            go.Scatter(
                x=[low, high],
                y=[low, high],
                mode="lines",
                line={"dash": "dot", "color": "grey"},
                showlegend=False,
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text=f"shuffled {metric}", row=1, col=column)
        figure.update_yaxes(title_text=metric, row=1, col=column)
    figure.update_layout(
        title=f"explanations by {scores.explainer or '?'}, scored by {scores.scorer}", height=420
    )
    return figure


def scorer_check(check: ScorerCheck) -> go.Figure:
    """The check's score matrices (rows: planted unit, columns: explanation): a scorer that
    reads explanations has a bright diagonal; one that does not has uniform rows."""
    metrics = list(check.scores)
    figure = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics)
    for column, metric in enumerate(metrics, start=1):
        figure.add_trace(
            go.Heatmap(
                z=check.scores[metric],
                x=list(check.labels),
                y=list(check.labels),
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                text=np.round(check.scores[metric], 3),
                texttemplate="%{text}",
                showscale=column == len(metrics),
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text="explanation", row=1, col=column)
    figure.update_yaxes(title_text="planted unit", autorange="reversed")
    verdict = "passes" if check.passes() else "fails"
    figure.update_layout(
        title=f"scorer check of {check.scorer} ({check.method}): margin {check.margin():+.3f}, {verdict}",
        height=420,
    )
    return figure


def _text(value) -> str:
    """A frame cell as text: missing values (``None``, or NaN in pandas' string columns) are ''."""
    return value if isinstance(value, str) else ""


def _number(value: float) -> str:
    """A score as text; a missing one (no explanation, failed requests) as a dash."""
    return f"{value:.3f}" if np.isfinite(value) else "–"


def _highlight(context: Context, max_activation: float) -> str:
    """The context's tokens, each shaded by its activation (hover: the value)."""
    spans = []
    for token, activation in zip(context.tokens, context.activations, strict=True):
        level = 0.0 if max_activation <= 0 else float(np.clip(activation / max_activation, 0, 1))
        spans.append(
            f"<span title='{activation:.3f}' style='background: rgba(255,140,0,{level:.2f})'>"
            f"{html.escape(token)}</span>"
        )
    return f"<div class='ctx'><span class='muted'>{context.kind}</span> {''.join(spans)}</div>"


def explanation_dashboard(
    scores: ExplanationScores, *, n_contexts: int = 5, check: ScorerCheck | None = None
) -> str:
    """A self-contained offline HTML page: the score figure (and ``check``, the scorer's
    planted-unit check, when given), then per unit its explanation, scores next to the
    shuffled baseline, failures, and its contexts with highlighting."""
    frame = scores.to_frame()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>explanations</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:70em}.muted{color:#888;font-size:85%}",
        ".ctx{font-family:monospace;white-space:pre-wrap;margin:.2em 0;border-bottom:1px solid #eee}",
        "table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd}",
        ".error{color:#b00}</style></head><body>",
        f"<h1>Explanations ({len(scores.examples)} units)</h1>",
        f"<p>explainer: {html.escape(str(scores.explainer))}; scorer: {html.escape(scores.scorer)}</p>",
        explanation_scores(scores).to_html(full_html=False, include_plotlyjs=True),
    ]
    if check is not None:
        if not check.passes():
            parts.append(
                f"<p class='error'>The scorer failed its check on planted units (margin "
                f"{check.margin():+.3f} < +0.1): it barely reads explanations, so the scores "
                "below say little about them.</p>"
            )
        parts.append(scorer_check(check).to_html(full_html=False, include_plotlyjs=False))
    for unit_examples, explanation in zip(scores.examples, scores.explanations, strict=True):
        rows = frame[frame["label"] == unit_examples.label]
        parts.append(f"<h2>{html.escape(unit_examples.label)}</h2>")
        if explanation.text is not None:
            parts.append(f"<p><b>{html.escape(explanation.text)}</b></p>")
        else:
            parts.append(f"<p class='error'>no explanation: {html.escape(str(explanation.error))}</p>")
        table = [
            "<table><tr><th>method</th><th>metric</th><th>score</th><th>shuffled</th><th>error</th></tr>"
        ]
        for _, row in rows.iterrows():
            for metric in METRICS[row["method"]]:
                table.append(
                    f"<tr><td>{row['method']}</td><td>{metric}</td><td>{_number(row[metric])}</td>"
                    f"<td>{_number(row[f'baseline_{metric}'])}</td>"
                    f"<td class='error'>{html.escape(_text(row['error']))}</td></tr>"
                )
        parts.append("".join(table) + "</table>")
        parts.append(
            f"<p class='muted'>max activation {unit_examples.max_activation:.3f}, active above "
            f"{unit_examples.threshold:.3f}, activating contexts {100 * unit_examples.activating_fraction:.1f}%</p>"
        )
        for kind in CONTEXT_KINDS:
            for context in getattr(unit_examples, kind)[:n_contexts]:
                parts.append(_highlight(context, unit_examples.max_activation))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_explanation_dashboard(scores: ExplanationScores, path: str | Path, **options) -> Path:
    """Write ``explanation_dashboard`` to ``path`` (works offline: plotly.js is inlined)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(explanation_dashboard(scores, **options), encoding="utf-8")
    return path
