"""Native hooked language models: ``load_model`` and ``HookedLM``."""

from mechinterp.models.config import ArchitectureConfig
from mechinterp.models.embedded import EMBEDDED_MODELS, embedded_model_dir
from mechinterp.models.families import FAMILIES, SUPPORTED_MODEL_TYPES, UnsupportedArchitectureError
from mechinterp.models.hooked_lm import HookedLM
from mechinterp.models.loading import from_hf_model, load_hf, load_model
from mechinterp.models.toy import TOY_MODELS, InductionTraining, load_induction_model, train_induction_model

__all__ = [
    "EMBEDDED_MODELS",
    "FAMILIES",
    "SUPPORTED_MODEL_TYPES",
    "TOY_MODELS",
    "ArchitectureConfig",
    "HookedLM",
    "InductionTraining",
    "UnsupportedArchitectureError",
    "embedded_model_dir",
    "from_hf_model",
    "load_hf",
    "load_induction_model",
    "load_model",
    "train_induction_model",
]
