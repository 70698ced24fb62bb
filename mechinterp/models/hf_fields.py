"""Readers of Hugging Face configs: one function per ``ArchitectureConfig`` field that HF
spells differently across families, and the field tables the Llama-style families share.

A family's ``from_hf`` (``families.py``) maps our field names to these readers.

Example:
    >>> DECODER_FIELDS["d_head"](hf_config)        # head_dim, or hidden_size / num_attention_heads
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class UnsupportedArchitectureError(ValueError):
    """Raised for an HF ``model_type`` with no native family (or a feature of one that no
    family supports)."""


def rope_parameter(hf_config: Any, key: str, default: Any) -> Any:
    """A RoPE setting from ``rope_parameters`` (transformers 5) or the config itself."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    return params.get(key, getattr(hf_config, key, default))


def head_dim(c: Any) -> int:
    """``head_dim`` where the config has one, else ``hidden_size / num_attention_heads``."""
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def layer_types(c: Any) -> tuple[str, ...] | None:
    """HF ``layer_types`` (``"sliding_attention"`` / ``"full_attention"``) in our spelling."""
    types = getattr(c, "layer_types", None)
    if types is None:
        return None
    unknown = sorted(set(types) - set(_LAYER_TYPES))
    if unknown:
        raise UnsupportedArchitectureError(
            f"layer types {unknown} are not supported (known: {', '.join(_LAYER_TYPES)})"
        )
    return tuple(_LAYER_TYPES[t] for t in types)


def rope_theta(c: Any, layer_type: str) -> float:
    """RoPE base of one layer type (Gemma 3 keeps one ``rope_parameters`` entry per type)."""
    params = getattr(c, "rope_parameters", None) or {}
    if layer_type in params:
        return params[layer_type]["rope_theta"]
    return rope_parameter(c, "rope_theta", 10000.0)


def rotary_dim(c: Any) -> int:
    """Rotated dimensions per head (``partial_rotary_factor`` of ``head_dim``)."""
    return int(head_dim(c) * rope_parameter(c, "partial_rotary_factor", 1.0))


def context_length(c: Any) -> int:
    """Phi-3's long-context RoPE switches every frequency once a sequence passes
    ``original_max_position_embeddings``; we keep the short-context frequencies and
    refuse longer sequences rather than silently differ from HF."""
    if rope_parameter(c, "rope_type", "default") == "longrope":
        return rope_parameter(c, "original_max_position_embeddings", c.max_position_embeddings)
    return c.max_position_embeddings


# Llama-style decoder fields: Llama, Mistral, Qwen2/3, Gemma 2/3, OLMo 2, Phi-3.
DECODER_FIELDS: dict[str, Callable[[Any], Any]] = {
    "n_layers": lambda c: c.num_hidden_layers,
    "d_model": lambda c: c.hidden_size,
    "n_heads": lambda c: c.num_attention_heads,
    "n_kv_heads": lambda c: getattr(c, "num_key_value_heads", None),
    "d_head": head_dim,
    "d_mlp": lambda c: c.intermediate_size,
    "d_vocab": lambda c: c.vocab_size,
    "n_ctx": context_length,
    "act_fn": lambda c: c.hidden_act,
    "norm_eps": lambda c: c.rms_norm_eps,
    "rotary_base": lambda c: rope_theta(c, "full_attention"),
    "sliding_window": lambda c: getattr(c, "sliding_window", None),
    "layer_types": layer_types,
}

GEMMA_FIELDS: dict[str, Callable[[Any], Any]] = {
    **DECODER_FIELDS,
    "act_fn": lambda c: c.hidden_activation,
    "attn_scale": lambda c: c.query_pre_attn_scalar**-0.5,
    "attn_softcap": lambda c: getattr(c, "attn_logit_softcapping", None),
    "final_softcap": lambda c: getattr(c, "final_logit_softcapping", None),
    "embed_scale": lambda c: c.hidden_size**0.5,
}
