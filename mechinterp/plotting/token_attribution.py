"""Heatmaps of token attributions: one row per example, per head, or per method."""

from __future__ import annotations

import plotly.graph_objects as go

from mechinterp.token_attribution import MethodComparison, TokenAttribution

SIGNLESS = ("saliency", "attention_rollout")  # non-negative scores: a one-sided colour scale


def _colour(method: str, largest: float) -> dict:
    if method in SIGNLESS:
        return {"colorscale": "Blues", "zmin": 0.0, "zmax": largest}
    return {"colorscale": "RdBu", "reversescale": True, "zmin": -largest, "zmax": largest}


def _token_axis(figure: go.Figure, labels: list[str]) -> None:
    """Positions on the x axis, labelled with their tokens (repeated tokens stay apart)."""
    figure.update_xaxes(
        tickmode="array", tickvals=list(range(len(labels))), ticktext=[repr(t)[1:-1] for t in labels]
    )


def token_attribution_heatmap(
    attribution: TokenAttribution, *, example: int | None = None, title: str | None = None
) -> go.Figure:
    """Scores over the tokens: one row per example (only ``example`` if given); for a head
    site, one row per head of ``example`` (default 0). Each cell shows its token; padding
    is blank.

    Example:
        >>> token_attribution_heatmap(attribute_tokens(model, prompts, correct=" Paris")).show()
    """
    values = attribution.values.float()
    mask = attribution.attention_mask.bool()
    heads = values.ndim == 3
    if heads:
        index = 0 if example is None else example
        z = values[index].T.masked_fill(~mask[index][None], float("nan"))
        rows = [f"head {h}" for h in range(values.shape[2])]
        sources = [index] * len(rows)
    else:
        sources = list(range(values.shape[0])) if example is None else [example]
        z = values[sources].masked_fill(~mask[sources], float("nan"))
        rows = [f"example {i}" for i in sources]
    text = [
        [t if m else "" for t, m in zip(attribution.tokens[i], mask[i].tolist(), strict=True)]
        for i in sources
    ]
    largest = float(z.nan_to_num().abs().max()) or 1.0
    figure = go.Figure(
        go.Heatmap(
            z=z.numpy(),
            y=rows,
            text=text,
            texttemplate="%{text}",
            hovertemplate="%{y}<br>pos %{x}: %{text}<br>score %{z:.4f}<extra></extra>",
            **_colour(attribution.method, largest),
        )
    )
    objective = attribution.metadata.get("objective", "")
    default = f"{attribution.method.replace('_', ' ')} at {attribution.site}" + (
        f" for {objective}" if objective else ""
    )
    figure.update_layout(title=title or default, height=220 + 40 * len(rows))
    figure.update_yaxes(autorange="reversed")
    figure.update_xaxes(title_text="position")
    return figure


def method_comparison_heatmap(
    comparison: MethodComparison, *, example: int = 0, title: str | None = None
) -> go.Figure:
    """One row per method over the real tokens of ``example``, each row divided by its
    largest magnitude (hover shows the raw score).

    Example:
        >>> method_comparison_heatmap(compare_methods(model, prompt, correct=" Paris")).show()
    """
    names = list(comparison.attributions)
    first = comparison.attributions[names[0]]
    if first.values.ndim != 2:
        raise ValueError(
            "method_comparison_heatmap draws per-token attributions; head sites have a head axis"
        )
    real = first.attention_mask[example].bool()
    labels = [t for t, keep in zip(first.tokens[example], real.tolist(), strict=True) if keep]
    raw = [comparison.attributions[n].values[example][real].float() for n in names]
    scaled = [row / (row.abs().max() or 1.0) for row in raw]
    figure = go.Figure(
        go.Heatmap(
            z=[row.tolist() for row in scaled],
            y=[n.replace("_", " ") for n in names],
            customdata=[row.tolist() for row in raw],
            text=[labels] * len(names),
            texttemplate="%{text}",
            colorscale="RdBu",
            reversescale=True,
            zmin=-1,
            zmax=1,
            hovertemplate="%{y}<br>%{text}: %{customdata:.4f}<extra></extra>",
        )
    )
    figure.update_layout(
        title=title
        or f"token attributions by method (each row scaled to its largest |score|), example {example}",
        height=220 + 45 * len(names),
    )
    figure.update_yaxes(autorange="reversed")
    _token_axis(figure, labels)
    return figure
