"""What a step hands back to the runner: key numbers, figures and tables.

Example:
    >>> StepOutput(summary={"cells": 450}, figures={"heatmap": figure}, tables=[table("top cells", frame)])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go


@dataclass(frozen=True)
class StepOutput:
    """``summary``: a few key numbers (the end-of-run table, ``done.json``); ``figures``:
    name -> plotly figure; ``tables``: from ``table()``, shown in the report."""

    summary: dict[str, Any]
    figures: dict[str, go.Figure] = field(default_factory=dict)
    tables: list[dict] = field(default_factory=list)


def table(title: str, frame: pd.DataFrame, *, digits: int = 4) -> dict:
    """A JSON-ready table (title, columns, rows) with floats rounded to ``digits``."""
    rounded = frame.round(digits)
    return {
        "title": title,
        "columns": [str(c) for c in rounded.columns],
        "rows": rounded.astype(object).where(rounded.notna(), None).values.tolist(),
    }
