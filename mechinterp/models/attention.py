"""Causal self-attention with rotary embeddings and grouped-query attention.

Shapes follow TransformerLens: queries are ``[batch, pos, head, d_head]``; keys and values
stay *grouped* ``[batch, pos, kv_head, d_head]`` in their hooks (each kv head is shared by
``n_heads // n_kv_heads`` consecutive query heads) and are expanded to query heads only
inside the score computation. The parameters follow the same split: ``W_K_grouped`` etc.
hold one matrix per kv head, and ``W_K`` etc. are TransformerLens' per-query-head views
of them (what TL's grouped-query attention also exposes under those names). RoPE (Su et
al. 2021) rotates the first ``rotary_dim`` dims of each head, in the "rotate half" layout
of Llama and GPT-NeoX checkpoints or the interleaved one of GPT-J. Family variants live
here too: QK-norm (Qwen3, Gemma 3, OLMo 2), attention-logit soft-capping and
``query_pre_attn_scalar`` (Gemma 2), per-layer sliding windows and rotary bases (Gemma 2/3).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechinterp.models.config import ArchitectureConfig
from mechinterp.models.layers import Norm, softcap


class Rotary(nn.Module):
    """Rotary position embedding tables, computed once per forward and shared by all layers.

    ``inv_freq`` (float32, kept out of the state dict and out of ``model.to(dtype)`` so
    low-precision models keep exact angles) can be replaced by a loader with a
    checkpoint's own frequencies (Llama-3 / YaRN scaling); ``attention_scaling``
    multiplies cos and sin as in HF. Models whose sliding layers use other frequencies
    (Gemma 3: ``rotary_base_local``) also have ``inv_freq_local`` / ``attention_scaling_local``;
    their tables are concatenated after the global ones on the last axis, and each layer
    reads its own half (``Attention.rotary_tables``).

    ``"interleaved"`` (GPT-J) rotates adjacent pairs of dims, so each angle is repeated in
    place (``a0 a0 a1 a1 ...``) instead of the halves layout (``a0 a1 ... a0 a1 ...``).
    """

    def __init__(self, cfg: ArchitectureConfig):
        super().__init__()
        self.rotary_dim = cfg.rotary_dim or cfg.d_head
        self.interleaved = cfg.rotary_style == "interleaved"
        self.inv_freq = _inverse_frequencies(cfg.rotary_base, self.rotary_dim)
        self.attention_scaling = 1.0
        local = cfg.rotary_base_local
        self.inv_freq_local = None if local is None else _inverse_frequencies(local, self.rotary_dim)
        self.attention_scaling_local = 1.0

    def _tables(self, positions: Tensor, inv_freq: Tensor, scaling: float) -> tuple[Tensor, Tensor]:
        angles = positions[..., None].float() * inv_freq.to(positions.device)
        if self.interleaved:
            angles = angles.repeat_interleave(2, dim=-1)
        else:
            angles = torch.cat([angles, angles], dim=-1)
        return angles.cos() * scaling, angles.sin() * scaling

    def forward(
        self, positions: Int[Tensor, "batch pos"]
    ) -> tuple[Float[Tensor, "batch pos rot"], Float[Tensor, "batch pos rot"]]:
        cos, sin = self._tables(positions, self.inv_freq, self.attention_scaling)
        if self.inv_freq_local is None:
            return cos, sin
        cos_local, sin_local = self._tables(positions, self.inv_freq_local, self.attention_scaling_local)
        return torch.cat([cos, cos_local], dim=-1), torch.cat([sin, sin_local], dim=-1)


def _inverse_frequencies(base: float, rotary_dim: int) -> Tensor:
    return 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "batch pos rot"],
    sin: Float[Tensor, "batch pos rot"],
    interleaved: bool = False,
) -> Float[Tensor, "batch pos head d_head"]:
    """Rotate the first ``cos.shape[-1]`` dims of every head; the rest pass through.

    Halves layout (Llama, NeoX): dim ``i`` pairs with ``i + rot/2``; interleaved (GPT-J):
    dim ``2i`` pairs with ``2i + 1``."""
    rot_dim = cos.shape[-1]
    rotated, passed = x[..., :rot_dim], x[..., rot_dim:]
    if interleaved:
        turned = torch.stack([-rotated[..., 1::2], rotated[..., ::2]], dim=-1).flatten(-2)
    else:
        first, second = rotated.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
    cos, sin = cos[:, :, None].to(x.dtype), sin[:, :, None].to(x.dtype)
    return torch.cat([rotated * cos + turned * sin, passed], dim=-1)


def _project(x: Tensor, weight: Float[Tensor, "head d_model d_head"]) -> Tensor:
    """``[batch pos d_model]`` (shared input) or ``[batch pos head d_model]`` (per-head input)."""
    pattern = "bpm,hmd->bphd" if x.ndim == 3 else "bphm,hmd->bphd"
    return torch.einsum(pattern, x, weight)


class Attention(nn.Module):
    """Multi-head / grouped-query causal attention with TransformerLens hooks.

    Parameters: ``W_Q`` ``[head, d_model, d_head]``, ``W_K_grouped`` / ``W_V_grouped``
    ``[kv_head, d_model, d_head]``, ``W_O`` ``[head, d_head, d_model]`` and biases; ``W_K``,
    ``W_V``, ``b_K``, ``b_V`` are derived per-query-head views (TransformerLens' layout).

    Hooks: ``hook_q``, ``hook_k``, ``hook_v`` (projections, before any QK-norm and rotary),
    ``hook_q_normed``, ``hook_k_normed`` (QK-norm models: after ``q_norm`` / ``k_norm``, before
    rotary), ``hook_rot_q``, ``hook_rot_k`` (rotary models), ``hook_attn_scores`` (scaled,
    soft-capped, masked), ``hook_pattern``, ``hook_z`` (pattern-weighted values),
    ``hook_result`` (per-head output; only fires when the model's ``use_attn_result`` is on).

    Per layer: the sliding window (``ArchitectureConfig.window(layer)``) and, in Gemma 3, the
    sliding layers' own rotary tables. With a norm after attention (``post_norm``: Gemma 2/3,
    OLMo 2), ``hook_result`` holds each head's share of the normalised output, its output
    times the norm's ``w / scale`` of the whole sum, so the heads (and ``b_O``'s share) still
    sum to ``hook_attn_out``.
    """

    def __init__(self, cfg: ArchitectureConfig, layer: int = 0):
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
        self.window = cfg.window(layer)
        sliding = cfg.layer_types is not None and cfg.layer_types[layer] == "sliding"
        self.local_rotary = cfg.rotary_base_local is not None and (sliding or cfg.layer_types is None)
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())
        if cfg.positional == "rotary":
            self.hook_rot_q = HookPoint()
            self.hook_rot_k = HookPoint()
        self.q_norm = self.k_norm = None
        if cfg.qk_norm is not None:
            per_head = cfg.qk_norm == "head"
            self.q_norm = Norm(cfg, d if per_head else h * d, rms=True)
            self.k_norm = Norm(cfg, d if per_head else kv * d, rms=True)
            self.hook_q_normed = HookPoint()
            self.hook_k_normed = HookPoint()

    def rotary_tables(self, rotary: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """This layer's cos and sin from the model's tables (global, or Gemma 3's local half)."""
        cos, sin = rotary
        if self.cfg.rotary_base_local is None:
            return cos, sin
        half = cos.shape[-1] // 2
        part = slice(half, None) if self.local_rotary else slice(None, half)
        return cos[..., part], sin[..., part]

    def normed_qk(
        self, norm: Norm, projected: Tensor, x: Tensor, weight: Tensor, bias: Tensor
    ) -> Float[Tensor, "batch pos head d_head"]:
        """QK-norm of hooked projections ``projected`` ``[batch, pos, head, d_head]``.

        Per head (Qwen3, Gemma 3) each head is normalised alone. Over the projection (OLMo 2)
        the statistic spans all heads; with per-head inputs ``x`` ``[batch, pos, head,
        d_model]``, head ``h`` is normalised with the whole projection of its own input copy
        (its own slot taken from ``projected``, so hooks on it take effect)."""
        if self.cfg.qk_norm == "head":
            return norm(projected)
        if x.ndim == 3:
            return norm(projected.flatten(-2)).view_as(projected)
        heads = torch.arange(projected.shape[2], device=projected.device)
        full = torch.einsum("bphm,jmd->bphjd", x, weight) + bias
        full[:, :, heads, heads] = projected
        return norm(full.flatten(-2)).view_as(full)[:, :, heads, heads]

    def allowed_keys(
        self, allowed: Bool[Tensor, "batch 1 q_pos k_pos"]
    ) -> Bool[Tensor, "batch 1 q_pos k_pos"]:
        """``allowed`` narrowed to this layer's sliding window (queries are the last ``q_pos``
        of the ``k_pos`` key positions, as with a key/value prefix)."""
        if self.window is None:
            return allowed
        n_q, n_k = allowed.shape[-2:]
        keys = torch.arange(n_k, device=allowed.device)
        queries = keys[n_k - n_q :]
        return allowed & (queries[:, None] - keys[None, :] < self.window)

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
        post_norm: Norm | None = None,
    ) -> Float[Tensor, "batch q_pos d_model"]:
        """``past`` holds keys (after rotary) and values of earlier positions that this call
        does not compute; they are prepended to this call's own keys and values.
        ``post_norm`` is the block's norm after attention, applied to the output here."""
        q = self.hook_q(_project(query_input, self.W_Q) + self.b_Q)
        k = self.hook_k(_project(key_input, self.W_K_grouped) + self.b_K_grouped)
        v = self.hook_v(_project(value_input, self.W_V_grouped) + self.b_V_grouped)
        if self.q_norm is not None:
            q = self.hook_q_normed(self.normed_qk(self.q_norm, q, query_input, self.W_Q, self.b_Q))
            k = self.hook_k_normed(
                self.normed_qk(self.k_norm, k, key_input, self.W_K_grouped, self.b_K_grouped)
            )
        if rotary is not None:
            cos, sin = self.rotary_tables(rotary)
            interleaved = self.cfg.rotary_style == "interleaved"
            q = self.hook_rot_q(apply_rotary(q, cos, sin, interleaved))
            k = self.hook_rot_k(apply_rotary(k, cos, sin, interleaved))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        group = self.cfg.heads_per_kv_head
        if group > 1:
            k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        scores = softcap(torch.einsum("bqhd,bkhd->bhqk", q, k) * self.cfg.scale, self.cfg.attn_softcap)
        allowed = self.allowed_keys(allowed)
        scores = self.hook_attn_scores(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min))
        pattern = self.hook_pattern(scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        if self.use_attn_result:
            result = torch.einsum("bqhd,hdm->bqhm", z, self.W_O)
            if post_norm is None:
                return self.hook_result(result).sum(dim=2) + self.b_O
            factor = post_norm.factor(result.sum(dim=2) + self.b_O)
            return self.hook_result(result * factor[:, :, None]).sum(dim=2) + self.b_O * factor
        out = torch.einsum("bqhd,hdm->bqm", z, self.W_O) + self.b_O
        return out if post_norm is None else post_norm(out)
