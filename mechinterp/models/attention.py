"""Causal self-attention with rotary embeddings and grouped-query attention.

Shapes follow TransformerLens: queries are ``[batch, pos, head, d_head]``; keys and values
stay *grouped* ``[batch, pos, kv_head, d_head]`` in their hooks (each kv head is shared by
``n_heads // n_kv_heads`` consecutive query heads) and are expanded to query heads only
inside the score computation. The parameters follow the same split: ``W_K_grouped`` etc.
hold one matrix per kv head, and ``W_K`` etc. are TransformerLens' per-query-head views
of them (what TL's grouped-query attention also exposes under those names). RoPE (Su et
al. 2021) rotates the first ``rotary_dim`` dims of each head, in the "rotate half" layout
of Llama and GPT-NeoX checkpoints or the interleaved one of GPT-J.

Family variants live in the same pieces: QK-norm (Qwen3 and Gemma 3 per head, OLMo 2 over
the projection), attention-logit soft-capping and ``query_pre_attn_scalar`` (Gemma 2),
per-layer sliding windows and rotary bases (Gemma 2/3, Qwen3), and the share of each head
in a post-attention norm (Gemma 2/3, OLMo 2).

The attention math lives here once, as the methods of ``Attention``: ``queries`` /
``keys`` / ``values`` (projections), ``rotate``, ``scores`` (scale, soft-cap and mask),
``pattern``, ``mix`` (``z``), ``head_outputs`` (``z @ W_O`` per head) and ``output``.
``forward`` composes them with the hooks in between; every analysis that needs a piece
(attribution patching's QK fix, path and edge patching, direct logit attribution) calls the
same method, so a new attention variant changes one place.

Inside, head-major tensors ``[head, batch, pos, d_head]`` keep the work to a few batched
matrix products per layer; what the hooks and methods hand out are views in the
TransformerLens layout above, so nothing is copied to present them.

Example:
    >>> attn = model.blocks[3].attn
    >>> context = model.attention_context(torch.ones_like(tokens))
    >>> scores = attn.scores(cache["blocks.3.attn.hook_rot_q"], cache["blocks.3.attn.hook_rot_k"], context)
    >>> torch.allclose(attn.pattern(scores), cache["blocks.3.attn.hook_pattern"])
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    checkpoint's own frequencies (Llama-3 / YaRN / longrope scaling); ``attention_scaling``
    multiplies cos and sin as in HF.

    ``forward`` returns ``(cos, signed_sin)``, each ``[batch, pos, rotary_dim]``: the sine
    of the first dim of each rotated pair is negated, so that ``apply_rotary`` needs no
    negation per layer. Pairs are ``(i, i + rot/2)`` ("half", Llama/NeoX) or ``(2i, 2i+1)``
    ("interleaved", GPT-J). Models whose sliding layers use other frequencies (Gemma 3:
    ``rotary_base_local``) also have ``inv_freq_local`` / ``attention_scaling_local``; their
    tables follow the global ones on the last axis and each layer reads its own part
    (``Attention.rotate``).
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
        sin = angles.sin() * scaling
        cos = angles.cos() * scaling
        if self.interleaved:
            return cos.repeat_interleave(2, dim=-1), torch.stack([-sin, sin], dim=-1).flatten(-2)
        return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)

    def forward(
        self, positions: Int[Tensor, "batch pos"]
    ) -> tuple[Float[Tensor, "batch pos d_rot"], Float[Tensor, "batch pos d_rot"]]:
        cos, signed_sin = self._tables(positions, self.inv_freq, self.attention_scaling)
        if self.inv_freq_local is None:
            return cos, signed_sin
        local = self._tables(positions, self.inv_freq_local, self.attention_scaling_local)
        return torch.cat([cos, local[0]], dim=-1), torch.cat([signed_sin, local[1]], dim=-1)


def _inverse_frequencies(base: float, rotary_dim: int) -> Tensor:
    return 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "#batch pos d_rot"],
    signed_sin: Float[Tensor, "#batch pos d_rot"],
    interleaved: bool = False,
) -> Float[Tensor, "batch pos head d_head"]:
    """Rotate the first ``cos.shape[-1]`` dims of every head; the rest pass through.
    ``signed_sin`` is ``Rotary``'s; ``interleaved`` pairs dims ``(2i, 2i+1)`` (GPT-J)
    instead of ``(i, i + rot/2)``."""
    rot_dim = cos.shape[-1]
    heads_first = _heads_first(x)  # [head, batch, pos, d_head]: the tables broadcast over heads
    cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)
    rotated = heads_first if rot_dim == x.shape[-1] else heads_first[..., :rot_dim]
    if interleaved:
        turned = rotated.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # swap each pair
    else:
        turned = rotated.roll(rot_dim // 2, dims=-1)  # [second half, first half]
    out = torch.addcmul(rotated * cos, turned, signed_sin)
    if rot_dim < x.shape[-1]:
        out = torch.cat([out, heads_first[..., rot_dim:]], dim=-1)
    return _heads_last(out)


def _heads_first(x: Tensor) -> Tensor:
    """``[batch, pos, head, ...]`` -> ``[head, batch, pos, ...]`` (a view)."""
    return x.movedim(2, 0)


def _heads_last(x: Tensor) -> Tensor:
    """``[head, batch, pos, ...]`` -> ``[batch, pos, head, ...]`` (a view)."""
    return x.movedim(0, 2)


@dataclass(frozen=True, eq=False)
class AttentionContext:
    """What every attention layer of one run needs besides its inputs: which keys each
    query may read, and the rotary tables of the query positions.

    Build it with ``HookedLM.attention_context``. ``allowed`` is ``[batch or 1, 1, q_pos,
    k_pos]`` (one shared row when no example is padded). ``rows(n)`` is the context of the
    first ``n`` rows (the patching engine adds rows as they enter at later layers).
    """

    positions: Int[Tensor, "batch q_pos"]
    allowed: Bool[Tensor, "batch 1 q_pos k_pos"]
    rotary: tuple[Tensor, Tensor] | None
    _bias: dict = field(default_factory=dict, repr=False)

    @property
    def shared(self) -> bool:
        """Whether every row reads the same keys (no padding): the mask broadcasts."""
        return self.allowed.shape[0] == 1

    def rows(self, n: int) -> AttentionContext:
        """The first ``n`` rows (views; a shared mask stays shared)."""
        if n == self.positions.shape[0]:
            return self
        rotary = None if self.rotary is None else (self.rotary[0][:n], self.rotary[1][:n])
        allowed = self.allowed if self.shared else self.allowed[:n]
        return AttentionContext(self.positions[:n], allowed, rotary, self._bias if self.shared else {})

    def to(self, device: torch.device) -> AttentionContext:
        """The same context on ``device`` (for a block on another device)."""
        rotary = None if self.rotary is None else (self.rotary[0].to(device), self.rotary[1].to(device))
        return AttentionContext(self.positions.to(device), self.allowed.to(device), rotary)

    def score_bias(
        self, n_heads: int, dtype: torch.dtype, window: int | None = None
    ) -> Float[Tensor, "row q_pos k_pos"]:
        """The additive mask of head-major scores ``[head*batch or 1, q_pos, k_pos]``: 0 where
        a query may read a key (within ``window`` positions back, for a sliding-window
        layer), the dtype's most negative number elsewhere. Made once per run (per head
        count, dtype and window)."""
        key = (n_heads, dtype, window)
        if key not in self._bias:
            allowed = self.allowed if window is None else self.allowed & _within(window, self.allowed)
            blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
            blocked = blocked.masked_fill_(~allowed, torch.finfo(dtype).min)[:, 0]  # [batch, q, k]
            if not self.shared:
                blocked = blocked.expand(n_heads, *blocked.shape).flatten(0, 1)
            self._bias[key] = blocked
        return self._bias[key]


def _within(window: int, allowed: Tensor) -> Bool[Tensor, "q_pos k_pos"]:
    """Query-key pairs at most ``window - 1`` positions apart (HF's sliding window); the
    queries are the last ``q_pos`` of the ``k_pos`` positions (as with a key/value prefix)."""
    n_q, n_k = allowed.shape[-2:]
    keys = torch.arange(n_k, device=allowed.device)
    return keys[n_k - n_q :, None] - keys[None, :] < window


class Attention(nn.Module):
    """Multi-head / grouped-query causal attention with TransformerLens hooks.

    Parameters: ``W_Q`` ``[head, d_model, d_head]``, ``W_K_grouped`` / ``W_V_grouped``
    ``[kv_head, d_model, d_head]``, ``W_O`` ``[head, d_head, d_model]`` and biases; ``W_K``,
    ``W_V``, ``b_K``, ``b_V`` are derived per-query-head views (TransformerLens' layout).
    QK-norm models also have ``q_norm.w`` / ``k_norm.w``.

    Hooks: ``hook_q``, ``hook_k``, ``hook_v`` (projections, before any QK-norm and rotary),
    ``hook_q_normed``, ``hook_k_normed`` (QK-norm models: after ``q_norm`` / ``k_norm``,
    before rotary; the norms' own ``hook_scale`` / ``hook_normalized`` fire too),
    ``hook_rot_q``, ``hook_rot_k`` (rotary models), ``hook_attn_scores`` (scaled,
    soft-capped, masked), ``hook_pattern``, ``hook_z`` (pattern-weighted values),
    ``hook_result`` (per-head output; only fires when the model's ``use_attn_result`` is
    on). Each step is also a method (see the module docstring) that analyses call on
    cached activations.

    Per layer: the sliding window (``ArchitectureConfig.window(layer)``) and, in Gemma 3, the
    sliding layers' own rotary tables. ``post_norm`` is the block's norm after attention
    (``ln1_post``: Gemma 2/3, OLMo 2; registered on the block under TransformerLens' name,
    only referenced here): the output is normalised here, and each head's output
    (``head_outputs``, ``hook_result``) is its share ``z_h W_O[h] * w / scale`` of the
    normalised sum, so heads and ``b_O``'s share still add up to ``hook_attn_out``.
    """

    def __init__(self, cfg: ArchitectureConfig, layer: int = 0, post_norm: Norm | None = None):
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
        sliding = cfg.layer_types is None or cfg.layer_types[layer] == "sliding"
        self.local_rotary = cfg.rotary_base_local is not None and sliding
        self.__dict__["post_norm"] = post_norm  # a reference, not a submodule (see above)
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

    # ------------------------------------------------------------------ pieces
    def queries(self, x: Tensor) -> Float[Tensor, "batch pos head d_head"]:
        """Query projection of ``[batch, pos, d_model]`` (or per-head ``[batch, pos, head, d_model]``)."""
        return _project(x, self.W_Q, self.b_Q)

    def keys(self, x: Tensor) -> Float[Tensor, "batch pos kv_head d_head"]:
        """Key projection (grouped: one per kv head), before QK-norm and rotary."""
        return _project(x, self.W_K_grouped, self.b_K_grouped)

    def values(self, x: Tensor) -> Float[Tensor, "batch pos kv_head d_head"]:
        """Value projection (grouped: one per kv head)."""
        return _project(x, self.W_V_grouped, self.b_V_grouped)

    def normed_queries(self, q: Tensor, x: Tensor) -> Float[Tensor, "batch pos head d_head"]:
        """``q_norm`` of projected queries ``q`` (``hook_q``) computed from inputs ``x``."""
        return self._qk_norm(self.q_norm, q, x, self.W_Q, self.b_Q)

    def normed_keys(self, k: Tensor, x: Tensor) -> Float[Tensor, "batch pos kv_head d_head"]:
        """``k_norm`` of projected keys ``k`` (``hook_k``) computed from inputs ``x``."""
        return self._qk_norm(self.k_norm, k, x, self.W_K_grouped, self.b_K_grouped)

    def _qk_norm(self, norm: Norm, projected: Tensor, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Per head (Qwen3, Gemma 3) each head is normalised alone. Over the projection
        (OLMo 2) the statistic spans all heads; with per-head inputs ``x`` ``[batch, pos,
        head, d_model]``, head ``h`` is normalised with the whole projection of its own input
        copy (its own slot taken from ``projected``, so hooks on it take effect)."""
        if self.cfg.qk_norm == "head":
            return norm(projected)
        if x.ndim == 3:
            return norm(projected.reshape(*projected.shape[:2], -1)).reshape(projected.shape)
        heads = torch.arange(projected.shape[2], device=projected.device)
        full = torch.einsum("bphm,jmd->bphjd", x, weight) + bias
        full[:, :, heads, heads] = projected
        return norm(full.flatten(-2)).view_as(full)[:, :, heads, heads]

    def rotate(self, x: Tensor, context: AttentionContext) -> Float[Tensor, "batch pos head d_head"]:
        """Queries or keys rotated by this layer's rotary tables (``hook_rot_q`` / ``hook_rot_k``)."""
        cos, signed_sin = context.rotary
        if self.cfg.rotary_base_local is not None:
            half = cos.shape[-1] // 2
            part = slice(half, None) if self.local_rotary else slice(None, half)
            cos, signed_sin = cos[..., part], signed_sin[..., part]
        return apply_rotary(x, cos, signed_sin, self.cfg.rotary_style == "interleaved")

    def scores(
        self,
        q: Float[Tensor, "batch q_pos head d_head"],
        k: Float[Tensor, "batch k_pos kv_head d_head"],
        context: AttentionContext,
    ) -> Float[Tensor, "batch head q_pos k_pos"]:
        """Attention scores as ``hook_attn_scores`` holds them: ``q . k`` times the scale,
        soft-capped (Gemma 2), pairs blocked by the mask or this layer's sliding window set
        to the dtype's most negative number. ``q`` and ``k`` are rotated already
        (``hook_rot_q`` / ``hook_rot_k``); ``q`` may be any subset of the heads of
        ``context``'s query positions as long as the keys cover what they read."""
        batch, n_q, heads = q.shape[:3]
        q_rows = _heads_first(q).reshape(heads * batch, n_q, q.shape[-1])
        k_rows = self._expand_groups(k, heads)
        bias = context.score_bias(heads, q.dtype, self.window)
        if self.cfg.attn_softcap is None:
            scores = torch.baddbmm(bias, q_rows, k_rows.transpose(1, 2), alpha=self.cfg.scale)
        else:
            raw = torch.bmm(q_rows, k_rows.transpose(1, 2)) * self.cfg.scale
            scores = softcap(raw, self.cfg.attn_softcap) + bias
        return scores.view(heads, batch, n_q, -1).transpose(0, 1)

    def pattern(
        self, scores: Float[Tensor, "batch head q_pos k_pos"]
    ) -> Float[Tensor, "batch head q_pos k_pos"]:
        """Softmax over keys, computed in float32 and returned in the scores' dtype."""
        return scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)

    def mix(
        self, pattern: Float[Tensor, "batch head q_pos k_pos"], v: Float[Tensor, "batch k_pos kv_head d_head"]
    ) -> Float[Tensor, "batch q_pos head d_head"]:
        """``z``: each head's pattern-weighted values."""
        batch, heads, n_q, n_k = pattern.shape
        rows = pattern.transpose(0, 1).reshape(heads * batch, n_q, n_k)
        z = torch.bmm(rows, self._expand_groups(v, heads))
        return _heads_last(z.view(heads, batch, n_q, -1))

    def head_outputs(
        self, z: Float[Tensor, "batch pos head d_head"]
    ) -> Float[Tensor, "batch pos head d_model"]:
        """Each head's output ``z[:, :, h] @ W_O[h]`` (no bias): ``hook_result``'s values, on
        ``z``'s device (analyses of a model placed across devices hold ``z`` on its home device).
        Under a post-attention norm, each head's share of the normalised output (the norm's
        ``w / scale`` of the whole layer's ``z``): ``z`` must then hold every head."""
        out = self._raw_head_outputs(z)
        if self.post_norm is None:
            return out
        return out * self.post_norm.factor(out.sum(dim=2) + self.b_O.to(out.device), hooked=False)[:, :, None]

    def bias_share(self, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """``b_O``'s part of the output at each position: ``b_O`` itself, or its share under
        a post-attention norm."""
        if self.post_norm is None:
            return self.b_O.to(z.device).expand(*z.shape[:2], -1)
        b_O = self.b_O.to(z.device)
        return b_O * self.post_norm.factor(self._raw_head_outputs(z).sum(dim=2) + b_O, hooked=False)

    def output_change(
        self, z_base: Float[Tensor, "batch pos head d_head"], z_new: Float[Tensor, "batch pos head d_head"]
    ) -> Float[Tensor, "batch pos d_model"]:
        """How the layer's output (``hook_attn_out``) changes when ``z`` goes from ``z_base`` to
        ``z_new`` (every head): ``(z_new - z_base) W_O`` summed over heads, or, under a
        post-attention norm (not linear), the difference of the two normalised outputs."""
        if self.post_norm is None:
            return self._raw_head_outputs(z_new - z_base).sum(dim=2)
        outputs = [self._raw_head_outputs(z).sum(dim=2) + self.b_O.to(z.device) for z in (z_new, z_base)]
        new, old = (out * self.post_norm.factor(out, hooked=False) for out in outputs)
        return new - old

    def _raw_head_outputs(self, z: Tensor) -> Tensor:
        batch, n_pos, heads, d_head = z.shape
        out = torch.bmm(_heads_first(z.to(self.W_O.device)).reshape(heads, batch * n_pos, d_head), self.W_O)
        return _heads_last(out.view(heads, batch, n_pos, -1)).to(z.device)

    def output(self, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """The layer's output: heads' outputs summed plus ``b_O`` (through ``hook_result``
        when ``use_attn_result`` is on), through the post-attention norm if there is one."""
        if self.use_attn_result:
            result = self._raw_head_outputs(z)
            if self.post_norm is None:
                return self.hook_result(result).sum(dim=2) + self.b_O
            factor = self.post_norm.factor(result.sum(dim=2) + self.b_O)
            return self.hook_result(result * factor[:, :, None]).sum(dim=2) + self.b_O * factor
        batch, n_pos = z.shape[:2]
        out = torch.addmm(self.b_O, z.reshape(batch * n_pos, -1), self.W_O.flatten(0, 1))
        out = out.view(batch, n_pos, -1)
        return out if self.post_norm is None else self.post_norm(out)

    def _expand_groups(self, x: Float[Tensor, "batch pos kv_head d_head"], heads: int) -> Tensor:
        """Keys or values as ``[head*batch, pos, d_head]`` rows matching head-major queries."""
        batch, n_pos, kv_heads, d_head = x.shape
        grouped = _heads_first(x)
        if heads != kv_heads:
            group = heads // kv_heads
            grouped = grouped[:, None].expand(kv_heads, group, batch, n_pos, d_head)
        return grouped.reshape(heads * batch, n_pos, d_head)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        query_input: Tensor,
        key_input: Tensor,
        value_input: Tensor,
        context: AttentionContext,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> Float[Tensor, "batch q_pos d_model"]:
        """``past`` holds keys (after rotary) and values of earlier positions that this call
        does not compute; they are prepended to this call's own keys and values."""
        q = self.hook_q(self.queries(query_input))
        k = self.hook_k(self.keys(key_input))
        v = self.hook_v(self.values(value_input))
        if self.q_norm is not None:
            q = self.hook_q_normed(self.normed_queries(q, query_input))
            k = self.hook_k_normed(self.normed_keys(k, key_input))
        if context.rotary is not None:
            q = self.hook_rot_q(self.rotate(q, context))
            k = self.hook_rot_k(self.rotate(k, context))
        if past is not None:
            k, v = _prepend(past[0], k), _prepend(past[1], v)
        scores = self.hook_attn_scores(self.scores(q, k, context))
        z = self.hook_z(self.mix(self.hook_pattern(self.pattern(scores)), v))
        return self.output(z)


def _project(
    x: Tensor, weight: Float[Tensor, "head d_model d_head"], bias: Float[Tensor, "head d_head"]
) -> Tensor:
    """``x @ weight[h] + bias[h]`` per head, as one batched product over heads, for a shared
    input ``[batch, pos, d_model]`` or per-head inputs ``[batch, pos, head, d_model]``."""
    heads, d_model, _ = weight.shape
    batch, n_pos = x.shape[:2]
    if x.ndim == 3:
        rows = x.reshape(1, batch * n_pos, d_model).expand(heads, -1, -1)
    else:
        rows = _heads_first(x).reshape(heads, batch * n_pos, d_model)
    out = torch.baddbmm(bias[:, None], rows, weight)
    return _heads_last(out.view(heads, batch, n_pos, -1))


def _prepend(
    prefix: Float[Tensor, "batch _pos kv_head d_head"], x: Float[Tensor, "batch pos kv_head d_head"]
) -> Tensor:
    """``cat([prefix, x])`` over positions, stored head-major like the projections."""
    return _heads_last(torch.cat([_heads_first(prefix), _heads_first(x)], dim=2))
