"""Plotly figures for mechinterp results. Core modules never import this package.

Example:
    >>> from mechinterp.plotting import patch_heatmap
    >>> patch_heatmap(result).show()
"""

from mechinterp.plotting.patching import comparison_scatter, patch_heatmap

__all__ = ["comparison_scatter", "patch_heatmap"]
