"""mechinterp: mechanistic interpretability for PyTorch language models.

The names below are imported on first use, so ``import mechinterp`` (and the command line's
config validation) does not pay for torch and transformers until a model is needed.

Example:
    >>> import mechinterp
    >>> model = mechinterp.load_model("smollm2-135m")
    >>> logits, cache = model.run_with_cache("The Eiffel Tower is in")
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mechinterp.models import ArchitectureConfig, HookedLM, load_hf, load_model
    from mechinterp.precision import tf32_matmuls

__all__ = ["ArchitectureConfig", "HookedLM", "load_hf", "load_model", "tf32_matmuls"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        module = "mechinterp.precision" if name == "tf32_matmuls" else "mechinterp.models"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'mechinterp' has no attribute {name!r}")
