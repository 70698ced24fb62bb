"""Plotly figures for mechinterp results. Core modules never import this package.

Example:
    >>> from mechinterp.plotting import patch_heatmap
    >>> patch_heatmap(result).show()
"""

from mechinterp.plotting.lens import (
    attention_heatmap,
    dla_bar,
    dla_heatmap,
    lens_heatmap,
    lens_trajectory,
    probe_accuracy,
)
from mechinterp.plotting.patching import comparison_scatter, patch_heatmap

__all__ = [
    "attention_heatmap",
    "comparison_scatter",
    "dla_bar",
    "dla_heatmap",
    "lens_heatmap",
    "lens_trajectory",
    "patch_heatmap",
    "probe_accuracy",
]
