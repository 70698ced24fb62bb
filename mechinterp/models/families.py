"""Supported Hugging Face families, declared as data.

Each ``Family`` says which HF ``model_type`` values it covers, how to read an
``ArchitectureConfig`` from the HF config (``fixed`` values plus ``from_hf`` readers), and
where each of our weights comes from (``WeightRule``: our name, the HF name, a layout
conversion). Adding a family means adding a table entry, not a branch in the loader.

Example:
    >>> family_for("qwen2").name
    'llama'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from mechinterp.models.config import ArchitectureConfig

Convert = Callable[[Tensor, ArchitectureConfig], Tensor]


# -------------------------------------------------------------------- layout conversions
def keep(w: Tensor, cfg: ArchitectureConfig) -> Tensor:
    return w


def transpose(w: Tensor, cfg: ArchitectureConfig) -> Tensor:
    """``nn.Linear`` ``[out, in]`` -> ``[in, out]``."""
    return w.T


def linear_to_heads(w: Tensor, cfg: ArchitectureConfig) -> Tensor:
    """``nn.Linear`` ``[heads * d_head, d_model]`` -> ``[heads, d_model, d_head]``."""
    return w.reshape(-1, cfg.d_head, cfg.d_model).transpose(1, 2)


def bias_to_heads(b: Tensor, cfg: ArchitectureConfig) -> Tensor:
    """``[heads * d_head]`` -> ``[heads, d_head]``."""
    return b.reshape(-1, cfg.d_head)


def linear_out_to_heads(w: Tensor, cfg: ArchitectureConfig) -> Tensor:
    """Output projection ``nn.Linear`` ``[d_model, heads * d_head]`` -> ``[heads, d_head, d_model]``."""
    return w.reshape(cfg.d_model, -1, cfg.d_head).permute(1, 2, 0)


def conv1d_out_to_heads(w: Tensor, cfg: ArchitectureConfig) -> Tensor:
    """GPT-2 ``Conv1D`` ``[heads * d_head, d_model]`` (in x out) -> ``[heads, d_head, d_model]``."""
    return w.reshape(-1, cfg.d_head, cfg.d_model)


def gpt2_qkv(part: int, bias: bool = False) -> Convert:
    """Slice q (0), k (1) or v (2) out of GPT-2's fused ``c_attn`` Conv1D ``[d_model, 3 d_model]``."""

    def convert(w: Tensor, cfg: ArchitectureConfig) -> Tensor:
        width = cfg.n_heads * cfg.d_head
        piece = w[..., part * width : (part + 1) * width]
        if bias:
            return piece.reshape(cfg.n_heads, cfg.d_head)
        return piece.reshape(cfg.d_model, cfg.n_heads, cfg.d_head).transpose(0, 1)

    return convert


def neox_qkv(part: int, bias: bool = False) -> Convert:
    """Slice q/k/v out of GPT-NeoX's fused ``query_key_value``, laid out ``[head, 3, d_head, ...]``."""

    def convert(w: Tensor, cfg: ArchitectureConfig) -> Tensor:
        per_head = w.reshape(cfg.n_heads, 3, cfg.d_head, *w.shape[1:])[:, part]
        return per_head if bias else per_head.transpose(1, 2)

    return convert


# -------------------------------------------------------------------- the tables
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


def _rope(hf_config: Any, key: str, default: Any) -> Any:
    params = getattr(hf_config, "rope_parameters", None) or {}
    return params.get(key, getattr(hf_config, key, default))


def _head_dim(c: Any) -> int:
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


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
    from_hf={
        "n_layers": lambda c: c.num_hidden_layers,
        "d_model": lambda c: c.hidden_size,
        "n_heads": lambda c: c.num_attention_heads,
        "n_kv_heads": lambda c: getattr(c, "num_key_value_heads", None),
        "d_head": _head_dim,
        "d_mlp": lambda c: c.intermediate_size,
        "d_vocab": lambda c: c.vocab_size,
        "n_ctx": lambda c: c.max_position_embeddings,
        "act_fn": lambda c: c.hidden_act,
        "norm_eps": lambda c: c.rms_norm_eps,
        "rotary_base": lambda c: _rope(c, "rope_theta", 10000.0),
        # Mistral always slides; Qwen2 only when use_sliding_window is set.
        "sliding_window": lambda c: (
            c.sliding_window if getattr(c, "use_sliding_window", c.model_type == "mistral") else None
        ),
    },
    weights=(
        WeightRule("embed.W_E", "model.embed_tokens.weight"),
        WeightRule("blocks.{l}.ln1.w", "model.layers.{l}.input_layernorm.weight"),
        WeightRule("blocks.{l}.ln2.w", "model.layers.{l}.post_attention_layernorm.weight"),
        *(
            WeightRule(
                _attn_param("W", x.upper()),
                f"model.layers.{{l}}.self_attn.{x}_proj.weight",
                linear_to_heads,
            )
            for x in "qkv"
        ),
        *(
            WeightRule(
                _attn_param("b", x.upper()),
                f"model.layers.{{l}}.self_attn.{x}_proj.bias",
                bias_to_heads,
                optional=True,
            )
            for x in "qkv"
        ),
        WeightRule("blocks.{l}.attn.W_O", "model.layers.{l}.self_attn.o_proj.weight", linear_out_to_heads),
        WeightRule("blocks.{l}.attn.b_O", "model.layers.{l}.self_attn.o_proj.bias", optional=True),
        WeightRule("blocks.{l}.mlp.W_gate", "model.layers.{l}.mlp.gate_proj.weight", transpose),
        WeightRule("blocks.{l}.mlp.W_in", "model.layers.{l}.mlp.up_proj.weight", transpose),
        WeightRule("blocks.{l}.mlp.b_in", "model.layers.{l}.mlp.up_proj.bias", optional=True),
        WeightRule("blocks.{l}.mlp.W_out", "model.layers.{l}.mlp.down_proj.weight", transpose),
        WeightRule("blocks.{l}.mlp.b_out", "model.layers.{l}.mlp.down_proj.bias", optional=True),
        WeightRule("ln_final.w", "model.norm.weight"),
        WeightRule("unembed.W_U", "lm_head.weight", transpose),
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
        "rotary_base": lambda c: _rope(c, "rope_theta", 10000.0),
        "rotary_dim": lambda c: int(
            c.hidden_size
            // c.num_attention_heads
            * _rope(c, "partial_rotary_factor", getattr(c, "rotary_pct", 1.0))
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

FAMILIES: tuple[Family, ...] = (_GPT2, _LLAMA, _NEOX)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.hf_model_types)


class UnsupportedArchitectureError(ValueError):
    """Raised for an HF ``model_type`` with no native family."""


def family_for(model_type: str) -> Family:
    """The family that covers an HF ``model_type``.

    Raises:
        UnsupportedArchitectureError: naming the supported types and the fallback.
    """
    for family in FAMILIES:
        if model_type in family.hf_model_types:
            return family
    raise UnsupportedArchitectureError(
        f"model_type {model_type!r} has no native mechinterp family; supported: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}. Fallback: wrap the HF model with "
        "transformer_lens.model_bridge.TransformerBridge.boot_transformers(name, hf_model=model) "
        "(hooks and TL utilities work, but no layer skipping and no batched patching engine)."
    )
