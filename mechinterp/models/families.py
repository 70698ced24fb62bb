"""Supported Hugging Face families, declared as data.

Each ``Family`` says which HF ``model_type`` values it covers, how to read an
``ArchitectureConfig`` from the HF config (``fixed`` values plus ``from_hf`` readers, shared
ones in ``hf_fields.py``), and where each of our weights comes from (``WeightRule``: our
name, the HF name, a layout conversion from ``conversions.py``). Adding a family means
adding a table entry, not a branch in the loader (README: "Adding a model family"); math
no existing field covers becomes a field of ``ArchitectureConfig`` implemented once in
``attention.py`` / ``block.py`` / ``layers.py``.

Families: GPT-2; Llama-style (Llama 3.x, Mistral, Qwen2); Qwen3 (QK-norm); Gemma 2 and
Gemma 3 text (scaled embeddings, ``1 + w`` norms folded at load, sandwich norms, soft-caps,
per-layer windows and rotary bases); OLMo 2 (post-norms, QK-norm over the projection);
Phi-3 (fused projections split at load, longrope); GPT-NeoX; GPT-J (interleaved rotary).

Example:
    >>> family_for("qwen2").name
    'llama'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mechinterp.models.config import ArchitectureConfig
from mechinterp.models.conversions import (
    Convert,
    bias_to_heads,
    conv1d_out_to_heads,
    fused_rows,
    gate_up_sizes,
    gpt2_qkv,
    keep,
    linear_out_to_heads,
    linear_to_heads,
    neox_qkv,
    plus_one,
    qkv_sizes,
    transpose,
)
from mechinterp.models.hf_fields import (
    DECODER_FIELDS,
    GEMMA_FIELDS,
    UnsupportedArchitectureError,
    rope_parameter,
    rope_theta,
    rotary_dim,
)


@dataclass(frozen=True)
class WeightRule:
    """Our parameter ``ours`` comes from HF tensor ``hf`` through ``convert``.

    ``{l}`` in both names stands for the layer index. ``hf`` may list several names
    (the first one present wins) where transformers versions disagree. ``optional`` rules (biases some
    checkpoints lack) leave our zero-initialised parameter alone when HF has no tensor.
    """

    ours: str
    hf: str | tuple[str, ...]
    convert: Convert = keep
    optional: bool = False


@dataclass(frozen=True)
class Family:
    name: str
    hf_model_types: tuple[str, ...]
    fixed: Mapping[str, Any]
    from_hf: Mapping[str, Callable[[Any], Any]]
    weights: tuple[WeightRule, ...]

    def architecture(self, hf_config: Any, model_name: str) -> ArchitectureConfig:
        read = {field: reader(hf_config) for field, reader in self.from_hf.items()}
        return ArchitectureConfig(**self.fixed, **read, model_name=model_name)


def _attn_param(kind: str, part: str) -> str:
    """Our name of a query/key/value weight (``kind`` "W") or bias ("b"); keys and values
    are stored per kv head, under ``..._grouped``."""
    suffix = "_grouped" if part in ("K", "V") else ""
    return f"blocks.{{l}}.attn.{kind}_{part}{suffix}"


def _layer(name: str) -> str:
    return f"model.layers.{{l}}.{name}"


def _separate_qkv_rules() -> tuple[WeightRule, ...]:
    """``q_proj``/``k_proj``/``v_proj``/``o_proj`` with optional biases (Llama layout)."""
    return (
        *(
            WeightRule(_attn_param("W", x.upper()), _layer(f"self_attn.{x}_proj.weight"), linear_to_heads)
            for x in "qkv"
        ),
        *(
            WeightRule(
                _attn_param("b", x.upper()),
                _layer(f"self_attn.{x}_proj.bias"),
                bias_to_heads,
                optional=True,
            )
            for x in "qkv"
        ),
        WeightRule("blocks.{l}.attn.W_O", _layer("self_attn.o_proj.weight"), linear_out_to_heads),
        WeightRule("blocks.{l}.attn.b_O", _layer("self_attn.o_proj.bias"), optional=True),
    )


def _gated_mlp_rules() -> tuple[WeightRule, ...]:
    return (
        WeightRule("blocks.{l}.mlp.W_gate", _layer("mlp.gate_proj.weight"), transpose),
        WeightRule("blocks.{l}.mlp.W_in", _layer("mlp.up_proj.weight"), transpose),
        WeightRule("blocks.{l}.mlp.b_in", _layer("mlp.up_proj.bias"), optional=True),
        WeightRule("blocks.{l}.mlp.W_out", _layer("mlp.down_proj.weight"), transpose),
        WeightRule("blocks.{l}.mlp.b_out", _layer("mlp.down_proj.bias"), optional=True),
    )


def _ends(norm: Convert = keep) -> tuple[WeightRule, ...]:
    """Embedding, final norm and unembedding (tied checkpoints reuse the embedding)."""
    return (
        WeightRule("embed.W_E", "model.embed_tokens.weight"),
        WeightRule("ln_final.w", "model.norm.weight", norm),
        WeightRule("unembed.W_U", ("lm_head.weight", "model.embed_tokens.weight"), transpose),
    )


def _norms(*pairs: tuple[str, str], convert: Convert = keep) -> tuple[WeightRule, ...]:
    return tuple(WeightRule(f"blocks.{{l}}.{ours}.w", _layer(f"{hf}.weight"), convert) for ours, hf in pairs)


_GPT2 = Family(
    name="gpt2",
    hf_model_types=("gpt2",),
    fixed={"norm": "layernorm", "positional": "learned", "mlp": "standard"},
    from_hf={
        "n_layers": lambda c: c.n_layer,
        "d_model": lambda c: c.n_embd,
        "n_heads": lambda c: c.n_head,
        "d_head": lambda c: c.n_embd // c.n_head,
        "d_mlp": lambda c: c.n_inner or 4 * c.n_embd,
        "d_vocab": lambda c: c.vocab_size,
        "n_ctx": lambda c: c.n_positions,
        "act_fn": lambda c: c.activation_function,
        "norm_eps": lambda c: c.layer_norm_epsilon,
    },
    weights=(
        WeightRule("embed.W_E", "transformer.wte.weight"),
        WeightRule("pos_embed.W_pos", "transformer.wpe.weight"),
        *(
            WeightRule(f"blocks.{{l}}.ln{i}.{p}", f"transformer.h.{{l}}.ln_{i}.{hf}")
            for i in (1, 2)
            for p, hf in (("w", "weight"), ("b", "bias"))
        ),
        *(
            WeightRule(_attn_param("W", x), "transformer.h.{l}.attn.c_attn.weight", gpt2_qkv(i))
            for i, x in enumerate("QKV")
        ),
        *(
            WeightRule(_attn_param("b", x), "transformer.h.{l}.attn.c_attn.bias", gpt2_qkv(i, bias=True))
            for i, x in enumerate("QKV")
        ),
        WeightRule("blocks.{l}.attn.W_O", "transformer.h.{l}.attn.c_proj.weight", conv1d_out_to_heads),
        WeightRule("blocks.{l}.attn.b_O", "transformer.h.{l}.attn.c_proj.bias"),
        WeightRule("blocks.{l}.mlp.W_in", "transformer.h.{l}.mlp.c_fc.weight"),
        WeightRule("blocks.{l}.mlp.b_in", "transformer.h.{l}.mlp.c_fc.bias"),
        WeightRule("blocks.{l}.mlp.W_out", "transformer.h.{l}.mlp.c_proj.weight"),
        WeightRule("blocks.{l}.mlp.b_out", "transformer.h.{l}.mlp.c_proj.bias"),
        WeightRule("ln_final.w", "transformer.ln_f.weight"),
        WeightRule("ln_final.b", "transformer.ln_f.bias"),
        WeightRule("unembed.W_U", "lm_head.weight", transpose),
    ),
)

_LLAMA = Family(
    name="llama",
    hf_model_types=("llama", "mistral", "qwen2"),
    fixed={"norm": "rmsnorm", "positional": "rotary", "mlp": "gated"},
    from_hf=DECODER_FIELDS,
    weights=(
        *_norms(("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")),
        *_separate_qkv_rules(),
        *_gated_mlp_rules(),
        *_ends(),
    ),
)

_QWEN3 = Family(
    name="qwen3",
    hf_model_types=("qwen3",),
    fixed={"norm": "rmsnorm", "positional": "rotary", "mlp": "gated", "qk_norm": "head"},
    from_hf=DECODER_FIELDS,
    weights=(
        *_norms(("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")),
        *_norms(("attn.q_norm", "self_attn.q_norm"), ("attn.k_norm", "self_attn.k_norm")),
        *_separate_qkv_rules(),
        *_gated_mlp_rules(),
        *_ends(),
    ),
)

_OLMO2 = Family(
    name="olmo2",
    hf_model_types=("olmo2",),
    fixed={
        "norm": "rmsnorm",
        "positional": "rotary",
        "mlp": "gated",
        "qk_norm": "projection",
        "block_norms": "post",
    },
    from_hf=DECODER_FIELDS,
    weights=(
        *_norms(("ln1_post", "post_attention_layernorm"), ("ln2_post", "post_feedforward_layernorm")),
        *_norms(("attn.q_norm", "self_attn.q_norm"), ("attn.k_norm", "self_attn.k_norm")),
        *_separate_qkv_rules(),
        *_gated_mlp_rules(),
        *_ends(),
    ),
)

_GEMMA_NORMS = (
    ("ln1", "input_layernorm"),
    ("ln1_post", "post_attention_layernorm"),
    ("ln2", "pre_feedforward_layernorm"),
    ("ln2_post", "post_feedforward_layernorm"),
)

_GEMMA2 = Family(
    name="gemma2",
    hf_model_types=("gemma2",),
    fixed={"norm": "rmsnorm", "positional": "rotary", "mlp": "gated", "block_norms": "sandwich"},
    from_hf=GEMMA_FIELDS,
    weights=(
        *_norms(*_GEMMA_NORMS, convert=plus_one),
        *_separate_qkv_rules(),
        *_gated_mlp_rules(),
        *_ends(plus_one),
    ),
)

_GEMMA3 = Family(
    name="gemma3",
    hf_model_types=("gemma3_text",),
    fixed={
        "norm": "rmsnorm",
        "positional": "rotary",
        "mlp": "gated",
        "block_norms": "sandwich",
        "qk_norm": "head",
    },
    from_hf={**GEMMA_FIELDS, "rotary_base_local": lambda c: rope_theta(c, "sliding_attention")},
    weights=(
        *_norms(*_GEMMA_NORMS, convert=plus_one),
        *_norms(("attn.q_norm", "self_attn.q_norm"), ("attn.k_norm", "self_attn.k_norm"), convert=plus_one),
        *_separate_qkv_rules(),
        *_gated_mlp_rules(),
        *_ends(plus_one),
    ),
)

_PHI3 = Family(
    name="phi3",
    hf_model_types=("phi3",),
    fixed={"norm": "rmsnorm", "positional": "rotary", "mlp": "gated"},
    from_hf={**DECODER_FIELDS, "rotary_dim": rotary_dim},
    weights=(
        *_norms(("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")),
        *(
            WeightRule(
                _attn_param("W", x),
                _layer("self_attn.qkv_proj.weight"),
                fused_rows(qkv_sizes, i, linear_to_heads),
            )
            for i, x in enumerate("QKV")
        ),
        WeightRule("blocks.{l}.attn.W_O", _layer("self_attn.o_proj.weight"), linear_out_to_heads),
        WeightRule(
            "blocks.{l}.mlp.W_gate",
            _layer("mlp.gate_up_proj.weight"),
            fused_rows(gate_up_sizes, 0, transpose),
        ),
        WeightRule(
            "blocks.{l}.mlp.W_in", _layer("mlp.gate_up_proj.weight"), fused_rows(gate_up_sizes, 1, transpose)
        ),
        WeightRule("blocks.{l}.mlp.W_out", _layer("mlp.down_proj.weight"), transpose),
        *_ends(),
    ),
)

_NEOX = Family(
    name="gpt_neox",
    hf_model_types=("gpt_neox",),
    fixed={"norm": "layernorm", "positional": "rotary", "mlp": "standard"},
    from_hf={
        "n_layers": lambda c: c.num_hidden_layers,
        "d_model": lambda c: c.hidden_size,
        "n_heads": lambda c: c.num_attention_heads,
        "d_head": lambda c: c.hidden_size // c.num_attention_heads,
        "d_mlp": lambda c: c.intermediate_size,
        "d_vocab": lambda c: c.vocab_size,
        "n_ctx": lambda c: c.max_position_embeddings,
        "act_fn": lambda c: c.hidden_act,
        "norm_eps": lambda c: c.layer_norm_eps,
        "rotary_base": lambda c: rope_parameter(c, "rope_theta", 10000.0),
        "rotary_dim": lambda c: int(
            c.hidden_size
            // c.num_attention_heads
            * rope_parameter(c, "partial_rotary_factor", getattr(c, "rotary_pct", 1.0))
        ),
        "parallel_attn_mlp": lambda c: c.use_parallel_residual,
    },
    weights=(
        WeightRule("embed.W_E", "gpt_neox.embed_in.weight"),
        *(
            WeightRule(f"blocks.{{l}}.ln{i}.{p}", f"gpt_neox.layers.{{l}}.{hf_ln}.{hf}")
            for i, hf_ln in ((1, "input_layernorm"), (2, "post_attention_layernorm"))
            for p, hf in (("w", "weight"), ("b", "bias"))
        ),
        *(
            WeightRule(
                _attn_param("W", x),
                "gpt_neox.layers.{l}.attention.query_key_value.weight",
                neox_qkv(i),
            )
            for i, x in enumerate("QKV")
        ),
        *(
            WeightRule(
                _attn_param("b", x),
                "gpt_neox.layers.{l}.attention.query_key_value.bias",
                neox_qkv(i, bias=True),
            )
            for i, x in enumerate("QKV")
        ),
        WeightRule("blocks.{l}.attn.W_O", "gpt_neox.layers.{l}.attention.dense.weight", linear_out_to_heads),
        WeightRule("blocks.{l}.attn.b_O", "gpt_neox.layers.{l}.attention.dense.bias"),
        WeightRule("blocks.{l}.mlp.W_in", "gpt_neox.layers.{l}.mlp.dense_h_to_4h.weight", transpose),
        WeightRule("blocks.{l}.mlp.b_in", "gpt_neox.layers.{l}.mlp.dense_h_to_4h.bias"),
        WeightRule("blocks.{l}.mlp.W_out", "gpt_neox.layers.{l}.mlp.dense_4h_to_h.weight", transpose),
        WeightRule("blocks.{l}.mlp.b_out", "gpt_neox.layers.{l}.mlp.dense_4h_to_h.bias"),
        WeightRule("ln_final.w", "gpt_neox.final_layer_norm.weight"),
        WeightRule("ln_final.b", "gpt_neox.final_layer_norm.bias"),
        WeightRule("unembed.W_U", ("lm_head.weight", "embed_out.weight"), transpose),
    ),
)

_GPTJ = Family(
    name="gptj",
    hf_model_types=("gptj",),
    # one LayerNorm feeds attention and MLP: ln1 and ln2 both hold ln_1's weights
    fixed={
        "norm": "layernorm",
        "positional": "rotary",
        "mlp": "standard",
        "parallel_attn_mlp": True,
        "rotary_style": "interleaved",
    },
    from_hf={
        "n_layers": lambda c: c.n_layer,
        "d_model": lambda c: c.n_embd,
        "n_heads": lambda c: c.n_head,
        "d_head": lambda c: c.n_embd // c.n_head,
        "d_mlp": lambda c: c.n_inner or 4 * c.n_embd,
        "d_vocab": lambda c: c.vocab_size,
        "n_ctx": lambda c: c.n_positions,
        "act_fn": lambda c: c.activation_function,
        "norm_eps": lambda c: c.layer_norm_epsilon,
        "rotary_dim": lambda c: c.rotary_dim,
    },
    weights=(
        WeightRule("embed.W_E", "transformer.wte.weight"),
        *(
            WeightRule(f"blocks.{{l}}.{ln}.{p}", f"transformer.h.{{l}}.ln_1.{hf}")
            for ln in ("ln1", "ln2")
            for p, hf in (("w", "weight"), ("b", "bias"))
        ),
        *(
            WeightRule(
                _attn_param("W", x.upper()),
                f"transformer.h.{{l}}.attn.{x}_proj.weight",
                linear_to_heads,
            )
            for x in "qkv"
        ),
        WeightRule("blocks.{l}.attn.W_O", "transformer.h.{l}.attn.out_proj.weight", linear_out_to_heads),
        WeightRule("blocks.{l}.mlp.W_in", "transformer.h.{l}.mlp.fc_in.weight", transpose),
        WeightRule("blocks.{l}.mlp.b_in", "transformer.h.{l}.mlp.fc_in.bias"),
        WeightRule("blocks.{l}.mlp.W_out", "transformer.h.{l}.mlp.fc_out.weight", transpose),
        WeightRule("blocks.{l}.mlp.b_out", "transformer.h.{l}.mlp.fc_out.bias"),
        WeightRule("ln_final.w", "transformer.ln_f.weight"),
        WeightRule("ln_final.b", "transformer.ln_f.bias"),
        WeightRule("unembed.W_U", "lm_head.weight", transpose),
        WeightRule("unembed.b_U", "lm_head.bias"),
    ),
)

FAMILIES: tuple[Family, ...] = (_GPT2, _LLAMA, _QWEN3, _GEMMA2, _GEMMA3, _OLMO2, _PHI3, _NEOX, _GPTJ)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.hf_model_types)


def family_for(model_type: str) -> Family:
    """The family that covers an HF ``model_type``.

    Raises:
        UnsupportedArchitectureError: naming the supported types and the fallback.
    """
    for family in FAMILIES:
        if model_type in family.hf_model_types:
            return family
    supported = "; ".join(f"{f.name} ({', '.join(f.hf_model_types)})" for f in FAMILIES)
    raise UnsupportedArchitectureError(
        f"model_type {model_type!r} has no native mechinterp family. Supported families "
        f"(HF model_type): {supported}. To add one, declare it in mechinterp/models/families.py "
        "and extend the family-parametrised tests (README: 'Adding a model family'). Fallback: "
        "wrap the HF model with transformer_lens.model_bridge.TransformerBridge.boot_transformers("
        "name, hf_model=model) (hooks and TL utilities work, but no layer skipping and no batched "
        "patching engine)."
    )
