"""Small layers of the native transformer: norms, embeddings, unembedding, MLP.

Each layer owns its weights in TransformerLens layout (``W_in: [d_model, d_mlp]``, ...)
and exposes its intermediate values through identity ``HookPoint`` modules, so a hook
name is the module path (``blocks.3.mlp.hook_post``).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformers.activations import ACT2FN

from mechinterp.models.config import ArchitectureConfig


def softcap(x: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(x / cap)`` (Gemma 2's attention and final-logit soft-capping); ``x`` if no cap."""
    return x if cap is None else (x / cap).tanh() * cap


class Norm(nn.Module):
    """LayerNorm or RMSNorm over the last axis, with ``hook_scale`` and ``hook_normalized``.

    ``hook_scale`` holds the divisor (``sqrt(var + eps)`` or ``sqrt(mean(x^2) + eps)``),
    shaped like the input with the last axis kept as 1, so cached scales let a residual
    direction be normalised exactly as the model did (direct logit attribution).

    ``length`` is the normalised axis' size (default ``d_model``; QK-norms use ``d_head`` or a
    whole projection), and QK-norms are RMSNorms whatever the model's ``norm``.
    """

    def __init__(self, cfg: ArchitectureConfig, length: int | None = None, *, rms: bool | None = None):
        super().__init__()
        self.centred = cfg.norm == "layernorm" if rms is None else not rms
        self.eps = cfg.norm_eps
        size = cfg.d_model if length is None else length
        self.w = nn.Parameter(torch.ones(size))
        self.b = nn.Parameter(torch.zeros(size)) if self.centred else None
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        out = self.hook_normalized(x / scale) * self.w
        return out + self.b if self.b is not None else out

    def factor(
        self, x: Float[Tensor, "*batch d_model"], *, hooked: bool = True
    ) -> Float[Tensor, "*batch d_model"]:
        """``w / scale(x)``, so that an RMSNorm's output is ``x * factor(x)``: a sum's norm is
        then the sum of its terms' shares (per-head outputs under a post-attention norm).
        Fires ``hook_scale`` (not ``hook_normalized``) unless ``hooked=False`` (analyses
        recomputing it from cached activations)."""
        if self.centred:
            raise ValueError("factor() splits an RMSNorm's output into shares; a LayerNorm is not linear")
        scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        return self.w / (self.hook_scale(scale) if hooked else scale)


class Embed(nn.Module):
    """Token embedding ``W_E: [d_vocab, d_model]``, times ``embed_scale`` where the family
    has one (Gemma: ``sqrt(d_model)``, rounded to the weights' dtype as Hugging Face does)."""

    def __init__(self, cfg: ArchitectureConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.zeros(cfg.d_vocab, cfg.d_model))
        self.scale = cfg.embed_scale

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        if self.scale is None:
            return self.W_E[tokens]
        scale = torch.tensor(self.scale, dtype=torch.float32, device=self.W_E.device).to(self.W_E.dtype)
        return self.W_E[tokens] * scale


class PosEmbed(nn.Module):
    """Learned absolute position embedding ``W_pos: [n_ctx, d_model]``."""

    def __init__(self, cfg: ArchitectureConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))

    def forward(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_pos[positions]


class Unembed(nn.Module):
    """Unembedding ``W_U: [d_model, d_vocab]`` and bias ``b_U`` (zeros where the model has none),
    then the final-logit soft-cap ``c * tanh(logits / c)`` where the family has one (Gemma 2).

    Every logit reader (forward, lenses, patching executors) goes through this module, so
    each sees the capped logits; linear decompositions (direct logit attribution) explain
    the logits before the cap (``uncapped``).
    """

    def __init__(self, cfg: ArchitectureConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.softcap = cfg.final_softcap

    def uncapped(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_vocab"]:
        """``x W_U + b_U``: the logits before the soft-cap (the same as ``forward`` without one)."""
        return x @ self.W_U + self.b_U

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_vocab"]:
        return softcap(self.uncapped(x), self.softcap)

    def columns(
        self, x: Float[Tensor, "*batch d_model"], start: int, stop: int
    ) -> Float[Tensor, "*batch _d_vocab"]:
        """The (capped) logits of vocabulary ids ``start:stop`` only: ``forward(x)[..., start:stop]``
        without computing the rest (chunked decoding of large vocabularies)."""
        return softcap(x @ self.W_U[:, start:stop] + self.b_U[start:stop], self.softcap)

    def logit_of(self, x: Float[Tensor, "row d_model"], ids: Int[Tensor, " row"]) -> Float[Tensor, " row"]:
        """Row ``i``'s (capped) logit of token ``ids[i]``: ``forward(x)[i, ids[i]]`` from one
        unembedding column per row."""
        return softcap((x * self.W_U[:, ids].T).sum(-1) + self.b_U[ids], self.softcap)


class MLP(nn.Module):
    """Feed-forward layer: ``act(x W_in + b_in) W_out + b_out``, or the gated (SwiGLU) form
    ``(act(x W_gate) * (x W_in + b_in)) W_out + b_out``.

    Hooks: ``hook_pre`` (the activation's input: the gate for gated MLPs),
    ``hook_pre_linear`` (gated only: the linear branch), ``hook_post`` (the hidden
    activations that ``W_out`` reads).
    """

    def __init__(self, cfg: ArchitectureConfig):
        super().__init__()
        self.gated = cfg.mlp == "gated"
        self.act = ACT2FN[cfg.act_fn]
        self.W_in = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_gate = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp)) if self.gated else None
        self.W_out = nn.Parameter(torch.zeros(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()
        self.hook_pre_linear = HookPoint() if self.gated else None
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        linear = x @ self.W_in + self.b_in
        if self.gated:
            hidden = self.act(self.hook_pre(x @ self.W_gate)) * self.hook_pre_linear(linear)
        else:
            hidden = self.act(self.hook_pre(linear))
        return self.hook_post(hidden) @ self.W_out + self.b_out
