"""Plotly figures for mechinterp results. Core modules never import this package.

Example:
    >>> from mechinterp.plotting import patch_heatmap
    >>> patch_heatmap(result).show()
"""

from mechinterp.plotting.attribution import attribution_graph_figure, write_attribution_graph_html
from mechinterp.plotting.circuits import circuit_figure, faithfulness_figure, roc_figure, write_circuit_html
from mechinterp.plotting.datasets import (
    corpus_diff_figure,
    crosscoder_figure,
    diff_report,
    hypothesis_figure,
    write_diff_report,
)
from mechinterp.plotting.explain import (
    explanation_dashboard,
    explanation_scores,
    scorer_check,
    write_explanation_dashboard,
)
from mechinterp.plotting.lens import (
    attention_heatmap,
    dla_bar,
    dla_heatmap,
    lens_heatmap,
    lens_trajectory,
    probe_accuracy,
)
from mechinterp.plotting.mib import mib_figure
from mechinterp.plotting.patching import comparison_scatter, patch_heatmap
from mechinterp.plotting.sae import dashboard_html, feature_histogram, sae_evaluation_figure
from mechinterp.plotting.token_attribution import method_comparison_heatmap, token_attribution_heatmap

__all__ = [
    "attention_heatmap",
    "attribution_graph_figure",
    "circuit_figure",
    "comparison_scatter",
    "corpus_diff_figure",
    "crosscoder_figure",
    "dashboard_html",
    "diff_report",
    "dla_bar",
    "dla_heatmap",
    "explanation_dashboard",
    "explanation_scores",
    "faithfulness_figure",
    "feature_histogram",
    "hypothesis_figure",
    "lens_heatmap",
    "lens_trajectory",
    "method_comparison_heatmap",
    "mib_figure",
    "patch_heatmap",
    "probe_accuracy",
    "roc_figure",
    "sae_evaluation_figure",
    "scorer_check",
    "token_attribution_heatmap",
    "write_attribution_graph_html",
    "write_circuit_html",
    "write_diff_report",
    "write_explanation_dashboard",
]
