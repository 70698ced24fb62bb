"""Load Hugging Face models and tokenizers from every source ``load_model`` accepts.

These return ``(hf_model, tokenizer)`` pairs; ``loading.py`` converts them to a native
``HookedLM``. The HF model is loaded with eager attention so it doubles as an exact
numerical reference.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` starts with the GGUF magic bytes."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})")


def _auto_classes():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM, AutoTokenizer


# Any of these in a local folder means it has a tokenizer (fast, SentencePiece or BPE files).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
)


def from_pretrained(
    name_or_dir: str | Path, dtype: torch.dtype, *, load_tokenizer: bool = True, **kwargs: Any
) -> tuple[Any, Any]:
    """A hub id or a local HF directory (config.json + weights + tokenizer files).

    A local folder without tokenizer files (``save_pretrained`` of a model alone) gives
    tokenizer ``None`` and one warning saying how to pass one: transformers would otherwise
    build an empty tokenizer that decodes every id to ``""``.
    """
    model_cls, tokenizer_cls = _auto_classes()
    model = model_cls.from_pretrained(name_or_dir, dtype=dtype, attn_implementation="eager", **kwargs)
    if not load_tokenizer:
        return model.eval(), None
    folder = Path(name_or_dir)
    if (
        folder.is_dir()
        and "gguf_file" not in kwargs
        and not any((folder / f).is_file() for f in TOKENIZER_FILES)
    ):
        warnings.warn(
            f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}), so the model is loaded "
            "without a tokenizer: text input raises an error and tokens are shown as <id N>. Pass one with "
            "load_model(path, tokenizer=AutoTokenizer.from_pretrained(<the model's original folder or hub id>))",
            stacklevel=3,
        )
        return model.eval(), None
    tokenizer = tokenizer_cls.from_pretrained(name_or_dir, **kwargs)
    return model.eval(), tokenizer


def from_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """A ``.gguf`` file, dequantised to ``dtype`` by transformers' GGUF reader."""
    check_gguf(path)
    model, tokenizer = from_pretrained(path.parent, dtype, gguf_file=path.name)
    return dequantised(model), tokenizer


def dequantised(model: Any) -> Any:
    """A plain HF model with the same weights as a GGUF-loaded one (which HF refuses to save)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype, attn_implementation="eager")
    plain.load_state_dict(model.state_dict())
    return plain.eval()
