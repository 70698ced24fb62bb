"""Sparse dictionaries: SAEs and transcoders. Load (SAELens, Gemma Scope, our format),
splice into a model, use latents as patching sites, train, evaluate, and build dashboards.

Example:
    >>> from mechinterp.sae import load_sae, train_sae, evaluate_sae
    >>> sae = load_sae("path/to/saelens-folder")
    >>> with model.saes([sae], use_error_term=True):
    ...     _, cache = model.run_with_cache("The Eiffel Tower is in")
"""

from mechinterp.sae.io import load_sae
from mechinterp.sae.model import SAE, SAEConfig
from mechinterp.sae.splice import splice_saes, spliced_sae

__all__ = [
    "SAE",
    "SAEConfig",
    "load_sae",
    "splice_saes",
    "spliced_sae",
]
