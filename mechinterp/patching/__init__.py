"""Activation patching: batched sweeps, TransformerLens-compatible functions, results.

Example:
    >>> from mechinterp.patching import SweepSpec, patch_sweep
    >>> from mechinterp.metrics import LogitDifference
    >>> result = patch_sweep(model, clean, corrupt, SweepSpec(kind="resid_pre"), metric)
"""

from mechinterp.patching.attribution import attribution_patch
from mechinterp.patching.compare import Comparison, compare
from mechinterp.patching.paths import Receiver, path_patch, reference_path_patch
from mechinterp.patching.reference import reference_patch_sweep
from mechinterp.patching.relevance import relevance_hooks, relevance_rules
from mechinterp.patching.result import PatchResult
from mechinterp.patching.sites import PatchSite, SweepGrid, SweepSpec
from mechinterp.patching.sweep import patch_sweep

__all__ = [
    "Comparison",
    "PatchResult",
    "PatchSite",
    "Receiver",
    "SweepGrid",
    "SweepSpec",
    "attribution_patch",
    "compare",
    "patch_sweep",
    "path_patch",
    "reference_patch_sweep",
    "reference_path_patch",
    "relevance_hooks",
    "relevance_rules",
]
