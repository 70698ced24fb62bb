"""Sparse dictionaries: SAEs and transcoders. Load (SAELens, Gemma Scope, our format),
splice into a model, use latents as patching sites, train, evaluate, and build dashboards.

Example:
    >>> from mechinterp.sae import load_sae, train_sae, evaluate_sae
    >>> sae = load_sae("path/to/saelens-folder")
    >>> with model.saes([sae], use_error_term=True):
    ...     _, cache = model.run_with_cache("The Eiffel Tower is in")
    >>> cache[f"{sae.hook_name}.hook_sae_acts_post"]
"""

from mechinterp.sae.activations import ActivationStream
from mechinterp.sae.dashboard import Context, FeatureDashboard, FeatureDashboards, feature_dashboards
from mechinterp.sae.evaluate import SAEEvaluation, evaluate_sae
from mechinterp.sae.features import (
    TopFeatures,
    ablate_features,
    feature_dla,
    feature_logit_effects,
    steer,
    top_features,
)
from mechinterp.sae.io import load_sae
from mechinterp.sae.model import SAE, SAEConfig
from mechinterp.sae.splice import splice_saes, spliced_sae
from mechinterp.sae.train import StepInfo, TrainingConfig, train_sae

__all__ = [
    "SAE",
    "ActivationStream",
    "Context",
    "FeatureDashboard",
    "FeatureDashboards",
    "SAEConfig",
    "SAEEvaluation",
    "StepInfo",
    "TopFeatures",
    "TrainingConfig",
    "ablate_features",
    "evaluate_sae",
    "feature_dashboards",
    "feature_dla",
    "feature_logit_effects",
    "load_sae",
    "splice_saes",
    "spliced_sae",
    "steer",
    "top_features",
    "train_sae",
]
