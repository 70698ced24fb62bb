"""mechinterp: mechanistic interpretability for PyTorch language models.

Example:
    >>> import mechinterp
    >>> model = mechinterp.load_model("smollm2-135m")
    >>> logits, cache = model.run_with_cache("The Eiffel Tower is in")
"""

from mechinterp.models import ArchitectureConfig, HookedLM, load_hf, load_model

__all__ = ["ArchitectureConfig", "HookedLM", "load_hf", "load_model"]
__version__ = "0.1.0"
