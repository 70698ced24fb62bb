"""Weight layout conversions: how an HF tensor becomes one of our parameters.

A ``Convert`` takes the HF tensor and our ``ArchitectureConfig`` and returns the tensor in our
layout (TransformerLens': per-head ``[head, d_model, d_head]`` projections, ``[in, out]``
matrices). The family tables (``families.py``) name one per ``WeightRule``.

Example:
    >>> linear_to_heads(hf_q_proj_weight, cfg).shape     # [n_heads, d_model, d_head]
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from mechinterp.models.config import ArchitectureConfig

Convert = Callable[[Tensor, ArchitectureConfig], Tensor]


def keep(w: Tensor, cfg: ArchitectureConfig) -> Tensor:
    """The HF tensor as it is."""
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


def plus_one(w: Tensor, cfg: ArchitectureConfig) -> Tensor:
    """Gemma's RMSNorm multiplies by ``1 + w``: store the effective scale ``1 + w``."""
    return 1 + w


def fused_rows(
    sizes: Callable[[ArchitectureConfig], tuple[int, ...]], part: int, then: Convert = keep
) -> Convert:
    """Rows ``part`` of an ``nn.Linear`` weight whose output stacks pieces of ``sizes(cfg)`` rows
    (Phi-3's ``qkv_proj`` and ``gate_up_proj``), converted by ``then``."""

    def convert(w: Tensor, cfg: ArchitectureConfig) -> Tensor:
        return then(w.split(list(sizes(cfg)), dim=0)[part], cfg)

    return convert


def qkv_sizes(cfg: ArchitectureConfig) -> tuple[int, ...]:
    """Rows of q, k and v in a fused ``qkv_proj`` (keys and values per kv head)."""
    return (cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head, cfg.kv_heads * cfg.d_head)


def gate_up_sizes(cfg: ArchitectureConfig) -> tuple[int, ...]:
    """Rows of the gate and the up projection in a fused ``gate_up_proj``."""
    return (cfg.d_mlp, cfg.d_mlp)
