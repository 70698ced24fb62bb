"""Weight views of ``HookedLM`` stacked over layers, in TransformerLens layout.

As in TransformerLens, ``W_K``, ``W_V``, ``b_K`` and ``b_V`` have one entry per *query*
head (on grouped-query models each kv head's weights are repeated for the query heads that
share it), so ``model.W_K[layer, head]`` pairs with ``model.W_Q[layer, head]``. The stored,
grouped tensors are ``W_K_grouped`` etc., ``[layer, kv_head, ...]``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.FactoredMatrix import FactoredMatrix


class WeightsMixin:
    """Stacked weights, factored circuits and residual-stream helpers."""

    def _stack(self, path: str) -> Tensor:
        first, attr = path.split(".")
        # .to: a model placed across devices stacks on its home device (a no-op otherwise)
        return torch.stack([getattr(getattr(block, first), attr).to(self.device) for block in self.blocks])

    W_Q = property(lambda self: self._stack("attn.W_Q"), doc="``[layer, head, d_model, d_head]``")
    W_K = property(lambda self: self._stack("attn.W_K"), doc="``[layer, head, d_model, d_head]``")
    W_V = property(lambda self: self._stack("attn.W_V"), doc="``[layer, head, d_model, d_head]``")
    W_O = property(lambda self: self._stack("attn.W_O"), doc="``[layer, head, d_head, d_model]``")
    b_Q = property(lambda self: self._stack("attn.b_Q"), doc="``[layer, head, d_head]``")
    b_K = property(lambda self: self._stack("attn.b_K"), doc="``[layer, head, d_head]``")
    b_V = property(lambda self: self._stack("attn.b_V"), doc="``[layer, head, d_head]``")
    W_K_grouped = property(
        lambda self: self._stack("attn.W_K_grouped"), doc="``[layer, kv_head, d_model, d_head]``"
    )
    W_V_grouped = property(
        lambda self: self._stack("attn.W_V_grouped"), doc="``[layer, kv_head, d_model, d_head]``"
    )
    b_K_grouped = property(lambda self: self._stack("attn.b_K_grouped"), doc="``[layer, kv_head, d_head]``")
    b_V_grouped = property(lambda self: self._stack("attn.b_V_grouped"), doc="``[layer, kv_head, d_head]``")
    b_O = property(lambda self: self._stack("attn.b_O"), doc="``[layer, d_model]``")

    def tl_parameters(self) -> dict[str, Float[Tensor, "..."]]:
        """Parameters under TransformerLens names, what ``SVDInterpreter`` reads: every
        parameter, plus each layer's per-query-head ``attn.W_K|W_V|b_K|b_V``.

        Example:
            >>> model.tl_parameters()["blocks.0.attn.W_V"].shape     # [head, d_model, d_head]
        """
        params = dict(self.named_parameters())
        for layer, block in enumerate(self.blocks):
            for name in ("W_K", "W_V", "b_K", "b_V"):
                params[f"blocks.{layer}.attn.{name}"] = getattr(block.attn, name)
        return params

    def _stack_mlp(self, name: str) -> Tensor:
        if self.architecture.attn_only:
            raise AttributeError(name)  # attention-only: hasattr(model, "W_in") is False
        return self._stack(f"mlp.{name}")

    W_in = property(lambda self: self._stack_mlp("W_in"), doc="``[layer, d_model, d_mlp]``")
    b_in = property(lambda self: self._stack_mlp("b_in"), doc="``[layer, d_mlp]``")
    W_out = property(lambda self: self._stack_mlp("W_out"), doc="``[layer, d_mlp, d_model]``")
    b_out = property(lambda self: self._stack_mlp("b_out"), doc="``[layer, d_model]``")

    @property
    def W_gate(self) -> Float[Tensor, "layer d_model d_mlp"]:
        """Gate weights of gated (SwiGLU) MLPs."""
        if self.architecture.mlp != "gated":
            raise AttributeError("W_gate")  # so hasattr(model, "W_gate") is False
        return self._stack_mlp("W_gate")

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "pos d_model"]:
        if self.pos_embed is None:
            raise AttributeError("W_pos")  # rotary models: hasattr(model, "W_pos") is False
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        return self.unembed.b_U

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` per layer and query head, ``[layer, head, d_model, d_model]``
        (ignores rotary, which makes QK position-dependent)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per layer and query head, ``[layer, head, d_model, d_model]``."""
        return FactoredMatrix(self.W_V, self.W_O)

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Sum of the attention-output (and MLP-output) biases written before ``layer``'s
        input (its MLP input when ``mlp_input``; attention-only models have none)."""
        if mlp_input and self.architecture.attn_only:
            raise ValueError("mlp_input=True but this model is attention-only (no MLP inputs)")
        total = torch.zeros(self.architecture.d_model, device=self.device, dtype=self.dtype)
        for block in self.blocks[:layer]:
            total = total + block.attn.b_O.to(total.device)
            if include_mlp_biases and not self.architecture.attn_only:
                total = total + block.mlp.b_out.to(total.device)
        if mlp_input:
            total = total + self.blocks[layer].attn.b_O.to(total.device)
        return total

    def tokens_to_residual_directions(
        self, tokens: str | int | Int[Tensor, "..."]
    ) -> Float[Tensor, "... d_model"]:
        """Unembedding columns of tokens: the residual direction each token's logit reads."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        return self.W_U[:, tokens.to(self.W_U.device)].movedim(0, -1)
