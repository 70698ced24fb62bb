"""Causal self-attention with rotary embeddings and grouped-query attention.

Shapes follow TransformerLens: queries are ``[batch, pos, head, d_head]``; keys and values
stay *grouped* ``[batch, pos, kv_head, d_head]`` in their hooks (each kv head is shared by
``n_heads // n_kv_heads`` consecutive query heads) and are expanded to query heads only
inside the score computation. The parameters follow the same split: ``W_K_grouped`` etc.
hold one matrix per kv head, and ``W_K`` etc. are TransformerLens' per-query-head views
of them (what TL's grouped-query attention also exposes under those names). RoPE (Su et al. 2021) rotates the first ``rotary_dim``
dims of each head in the "rotate half" layout that Llama and GPT-NeoX checkpoints use.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechinterp.models.config import ArchitectureConfig


class Rotary(nn.Module):
    """Rotary position embedding tables, computed once per forward and shared by all layers.

    ``inv_freq`` (float32, kept out of the state dict and out of ``model.to(dtype)`` so
    low-precision models keep exact angles) can be replaced by a loader with a
    checkpoint's own frequencies (Llama-3 / YaRN scaling); ``attention_scaling``
    multiplies cos and sin as in HF.
    """

    def __init__(self, cfg: ArchitectureConfig):
        super().__init__()
        self.rotary_dim = cfg.rotary_dim or cfg.d_head
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32) / self.rotary_dim
        self.inv_freq = 1.0 / cfg.rotary_base**exponents
        self.attention_scaling = 1.0

    def forward(
        self, positions: Int[Tensor, "batch pos"]
    ) -> tuple[Float[Tensor, "batch pos rot"], Float[Tensor, "batch pos rot"]]:
        angles = positions[..., None].float() * self.inv_freq.to(positions.device)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "batch pos rot"],
    sin: Float[Tensor, "batch pos rot"],
) -> Float[Tensor, "batch pos head d_head"]:
    """Rotate the first ``cos.shape[-1]`` dims of every head; the rest pass through."""
    rot_dim = cos.shape[-1]
    rotated, passed = x[..., :rot_dim], x[..., rot_dim:]
    first, second = rotated.chunk(2, dim=-1)
    half_turned = torch.cat([-second, first], dim=-1)
    cos, sin = cos[:, :, None].to(x.dtype), sin[:, :, None].to(x.dtype)
    return torch.cat([rotated * cos + half_turned * sin, passed], dim=-1)


def _project(x: Tensor, weight: Float[Tensor, "head d_model d_head"]) -> Tensor:
    """``[batch pos d_model]`` (shared input) or ``[batch pos head d_model]`` (per-head input)."""
    pattern = "bpm,hmd->bphd" if x.ndim == 3 else "bphm,hmd->bphd"
    return torch.einsum(pattern, x, weight)


class Attention(nn.Module):
    """Multi-head / grouped-query causal attention with TransformerLens hooks.

    Parameters: ``W_Q`` ``[head, d_model, d_head]``, ``W_K_grouped`` / ``W_V_grouped``
    ``[kv_head, d_model, d_head]``, ``W_O`` ``[head, d_head, d_model]`` and biases; ``W_K``,
    ``W_V``, ``b_K``, ``b_V`` are derived per-query-head views (TransformerLens' layout).

    Hooks: ``hook_q``, ``hook_k``, ``hook_v`` (before rotary), ``hook_rot_q``, ``hook_rot_k``
    (rotary models), ``hook_attn_scores`` (scaled and masked), ``hook_pattern``,
    ``hook_z`` (pattern-weighted values), ``hook_result`` (per-head output; only fires
    when the model's ``use_attn_result`` is on).
    """

    def __init__(self, cfg: ArchitectureConfig):
        super().__init__()
        self.cfg = cfg
        h, kv, m, d = cfg.n_heads, cfg.kv_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.zeros(h, m, d))
        self.W_K_grouped = nn.Parameter(torch.zeros(kv, m, d))
        self.W_V_grouped = nn.Parameter(torch.zeros(kv, m, d))
        self.W_O = nn.Parameter(torch.zeros(h, d, m))
        self.b_Q = nn.Parameter(torch.zeros(h, d))
        self.b_K_grouped = nn.Parameter(torch.zeros(kv, d))
        self.b_V_grouped = nn.Parameter(torch.zeros(kv, d))
        self.b_O = nn.Parameter(torch.zeros(m))
        self.use_attn_result = False
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())
        if cfg.positional == "rotary":
            self.hook_rot_q = HookPoint()
            self.hook_rot_k = HookPoint()

    def per_query_head(self, grouped: Float[Tensor, "kv_head ..."]) -> Float[Tensor, "head ..."]:
        """Repeat each kv head's tensor for the query heads that share it."""
        return grouped.repeat_interleave(self.cfg.heads_per_kv_head, dim=0)

    W_K = property(
        lambda self: self.per_query_head(self.W_K_grouped),
        doc="Keys per query head ``[head, d_model, d_head]`` (TL layout; read-only, from ``W_K_grouped``).",
    )
    W_V = property(
        lambda self: self.per_query_head(self.W_V_grouped),
        doc="Values per query head ``[head, d_model, d_head]`` (TL layout; read-only, from ``W_V_grouped``).",
    )
    b_K = property(
        lambda self: self.per_query_head(self.b_K_grouped),
        doc="Key biases per query head ``[head, d_head]`` (read-only, from ``b_K_grouped``).",
    )
    b_V = property(
        lambda self: self.per_query_head(self.b_V_grouped),
        doc="Value biases per query head ``[head, d_head]`` (read-only, from ``b_V_grouped``).",
    )

    def forward(
        self,
        query_input: Tensor,
        key_input: Tensor,
        value_input: Tensor,
        allowed: Bool[Tensor, "batch 1 q_pos k_pos"],
        rotary: tuple[Tensor, Tensor] | None,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> Float[Tensor, "batch q_pos d_model"]:
        """``past`` holds keys (after rotary) and values of earlier positions that this call
        does not compute; they are prepended to this call's own keys and values."""
        q = self.hook_q(_project(query_input, self.W_Q) + self.b_Q)
        k = self.hook_k(_project(key_input, self.W_K_grouped) + self.b_K_grouped)
        v = self.hook_v(_project(value_input, self.W_V_grouped) + self.b_V_grouped)
        if rotary is not None:
            q = self.hook_rot_q(apply_rotary(q, *rotary))
            k = self.hook_rot_k(apply_rotary(k, *rotary))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        group = self.cfg.heads_per_kv_head
        if group > 1:
            k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * self.cfg.scale
        scores = self.hook_attn_scores(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min))
        pattern = self.hook_pattern(scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        if self.use_attn_result:
            result = self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        return torch.einsum("bqhd,hdm->bqm", z, self.W_O) + self.b_O
