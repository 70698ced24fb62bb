"""What a step hands back to the runner: key numbers, figures and tables.

Example:
    >>> StepOutput(summary={"cells": 450}, figures={"heatmap": figure}, tables=[table("top cells", frame)])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go


@dataclass(frozen=True)
class StepOutput:
    """``summary``: a few key numbers (the end-of-run table, ``done.json``); ``figures``:
    name -> plotly figure; ``tables``: from ``table()``, shown in the report."""

    summary: dict[str, Any]
    figures: dict[str, go.Figure] = field(default_factory=dict)
    tables: list[dict] = field(default_factory=list)


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits, as a plain float.

    Rounding to decimals is not enough: a float32 ``7.2154`` widens to ``7.215400218963623``,
    and ``round(3e-6, 4)`` is ``0.0``.

    Example:
        >>> significant(7.215400218963623), significant(-0.000123456), significant(12345.6)
        (7.215, -0.0001235, 12350.0)
    """
    return float(f"{float(value):.{digits}g}")


def shown(value: Any, digits: int = 4) -> str:
    """How the report and the terminal print a number: floats to ``digits`` significant
    digits (run folders written before rounding print the same), anything else as is.

    Example:
        >>> shown(7.215400218963623), shown(30), shown("L3 H1")
        ('7.215', '30', 'L3 H1')
    """
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _cell(value: Any, digits: int) -> Any:
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else significant(value, digits)
    return value


def table(title: str, frame: pd.DataFrame, *, digits: int = 4) -> dict:
    """A JSON-ready table (title, columns, rows) with floats rounded to ``digits``
    significant digits and missing values as ``None``."""
    rows = [[_cell(value, digits) for value in row] for row in frame.astype(object).values.tolist()]
    return {"title": title, "columns": [str(c) for c in frame.columns], "rows": rows}
