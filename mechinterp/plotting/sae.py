"""Figures and pages for sparse dictionaries: the evaluation summary and feature dashboards."""

from __future__ import annotations

import html

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from mechinterp.sae.dashboard import FeatureDashboard, FeatureDashboards
from mechinterp.sae.evaluate import SAEEvaluation


def sae_evaluation_figure(result: SAEEvaluation) -> go.Figure:
    """Left: next-token loss clean / spliced / zero-ablated (with CE recovered); right: the
    distribution of latent firing frequencies (log10; dead latents counted in the title)."""
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            f"cross-entropy (recovered {result.ce_recovered:.1%})",
            f"latent frequency ({result.dead_fraction:.1%} dead)",
        ),
    )
    figure.add_trace(
        go.Bar(
            x=["clean", "SAE spliced", "zero-ablated"],
            y=[result.ce_clean, result.ce_spliced, result.ce_zero_ablated],
            marker_color=["#4c78a8", "#f58518", "#9d9d9d"],
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    alive = result.latent_frequency[result.latent_frequency > 0]
    figure.add_trace(
        go.Histogram(x=torch.log10(alive).tolist(), nbinsx=50, marker_color="#54a24b", showlegend=False),
        row=1,
        col=2,
    )
    figure.update_yaxes(title_text="loss (nats/token)", row=1, col=1)
    figure.update_xaxes(title_text="log10(fraction of tokens)", row=1, col=2)
    figure.update_layout(
        title=(
            f"SAE at {result.hook_name}: explained variance {result.explained_variance:.3f}, "
            f"L0 {result.l0:.1f}, {result.n_tokens} tokens"
        ),
        height=380,
    )
    return figure


def feature_histogram(board: FeatureDashboard) -> go.Figure:
    """Histogram of one latent's non-zero activations."""
    figure = go.Figure(go.Histogram(x=board.activations.tolist(), nbinsx=40, marker_color="#4c78a8"))
    figure.update_layout(
        title=f"non-zero activations (fires on {board.frequency:.3%} of tokens)",
        xaxis_title="activation",
        yaxis_title="tokens",
        height=260,
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
    )
    return figure


def _context_html(tokens: list[str], activations: list[float], peak: float) -> str:
    spans = []
    for token, value in zip(tokens, activations, strict=True):
        alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, value / peak))
        text = html.escape(token).replace("\n", "⏎")
        spans.append(
            f'<span class="tok" style="background: rgba(255,140,0,{alpha:.2f})" '
            f'title="{value:.3f}">{text}</span>'
        )
    return "".join(spans)


def _token_list(items: list[tuple[str, float]], colour: str) -> str:
    rows = "".join(
        f'<li><code style="color:{colour}">{html.escape(repr(token))}</code> {value:+.3f}</li>'
        for token, value in items
    )
    return f"<ol>{rows}</ol>"


def dashboard_html(boards: FeatureDashboards) -> str:
    """One self-contained HTML page (plotly inlined, no network) with a section per latent:
    top contexts with tokens shaded by activation (hover for the value), the activation
    histogram, and the top promoted and suppressed tokens."""
    sections = []
    for i, board in enumerate(boards.features):
        plot = feature_histogram(board).to_html(full_html=False, include_plotlyjs=i == 0)
        contexts = (
            "".join(
                f'<div class="ctx"><span class="peak">{c.peak:.2f}</span> '
                f"{_context_html(c.tokens, c.activations, c.peak)}</div>"
                for c in board.contexts
            )
            or "<p>never fires on these texts</p>"
        )
        sections.append(
            f'<section id="feature-{board.feature}"><h2>Feature {board.feature}</h2>'
            f'<div class="grid"><div><h3>Top contexts</h3>{contexts}</div>'
            f"<div>{plot}</div>"
            f"<div><h3>Promoted tokens</h3>{_token_list(board.promoted, '#1a7f37')}"
            f"<h3>Suppressed tokens</h3>{_token_list(board.suppressed, '#cf222e')}</div></div></section>"
        )
    title = html.escape(f"{boards.model_name}: features of the SAE at {boards.hook_name}")
    style = (
        "body{font-family:sans-serif;margin:2em}section{border-top:1px solid #ccc;padding:1em 0}"
        ".grid{display:grid;grid-template-columns:2fr 1.2fr 1fr;gap:1.5em}"
        ".ctx{font-family:monospace;white-space:pre-wrap;margin:.3em 0;font-size:13px}"
        ".tok{border-radius:2px}.peak{color:#888;margin-right:.5em}ol{padding-left:1.5em;margin:0}"
    )
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title><style>{style}</style>'
        f"</head><body><h1>{title}</h1><p>{boards.n_tokens} tokens scanned.</p>"
        f"{''.join(sections)}</body></html>"
    )
