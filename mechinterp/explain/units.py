"""``Unit``: one thing to explain (an SAE latent, an MLP neuron, an attention head, a direction).

Every unit reads one hook and turns its activation ``[batch, pos, ...]`` into one number per
token ``[batch, pos]``; that per-token activation is what examples show, explainers describe
and scorers predict.

Kinds:
    - ``sae_latent``: latent ``index`` of ``sae.encode(x)`` at ``sae.hook_name``. ``sae`` is any
      object with ``encode(x) -> [..., d_sae]`` and ``hook_name`` (``mechinterp.sae.SAE``, an
      SAELens SAE, or your own module).
    - ``neuron``: ``blocks.{layer}.mlp.hook_post[..., index]``.
    - ``head_output``: the norm of head ``index``'s output ``z_h @ W_O[h]`` at each query token.
    - ``head_attention``: how much attention each token *receives* from head ``index``: the
      largest pattern weight any later (or the same) query gives it. With ``skip_first`` (default)
      position 0 (the BOS sink) is not scored.
    - ``head_attention_to``: how much attention each query token pays to every occurrence of
      token id ``token`` (summed over those key positions): a head that looks at, say, " Paris".
    - ``direction``: ``x @ direction + bias`` at any hook whose last axis is ``d_model`` (or
      ``d_mlp``, ...): a probe direction, a steering vector, an unembedding row.

Example:
    >>> units = [Unit.neuron(3, 17), Unit.head_output(2, 5), Unit.direction("blocks.4.hook_resid_post", v, label="digits")]
    >>> units[0].hook_name
    'blocks.3.mlp.hook_post'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from mechinterp.dims import AttentionMask, Tokens

UnitKind = Literal["sae_latent", "neuron", "head_output", "head_attention", "head_attention_to", "direction"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Unit:
    """One unit to explain. Build it with a class method (``Unit.neuron`` etc.).

    ``label`` names it in tables and prompts never (the explainer is not told what a unit is);
    ``hook_name`` is the hook it reads; ``index`` the latent / neuron / head.
    """

    kind: UnitKind
    hook_name: str
    label: str
    index: int | None = None
    layer: int | None = None
    direction: Float[Tensor, " _"] | None = field(default=None, repr=False)  # the hook's last axis
    bias: float = 0.0
    sae: Any = field(default=None, repr=False)
    skip_first: bool = True
    token: int | None = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def sae_latent(cls, sae: Any, index: int, *, label: str | None = None) -> Unit:
        """Latent ``index`` of ``sae`` (needs ``sae.encode`` and ``sae.hook_name``)."""
        for attribute in ("encode", "hook_name"):
            if not hasattr(sae, attribute):
                raise TypeError(
                    f"an SAE unit needs an object with encode(x) and hook_name; {type(sae).__name__} has no {attribute!r}"
                )
        return cls(
            kind="sae_latent",
            hook_name=sae.hook_name,
            index=int(index),
            sae=sae,
            label=label or f"{sae.hook_name}/latent {index}",
        )

    @classmethod
    def neuron(cls, layer: int, index: int, *, hook: str = "mlp.hook_post", label: str | None = None) -> Unit:
        """MLP neuron ``index`` of block ``layer`` (``hook``: ``mlp.hook_post`` or ``mlp.hook_pre``)."""
        return cls(
            kind="neuron",
            hook_name=f"blocks.{layer}.{hook}",
            index=int(index),
            layer=int(layer),
            label=label or f"L{layer}N{index}",
        )

    @classmethod
    def head_output(cls, layer: int, head: int, *, label: str | None = None) -> Unit:
        """Head ``head`` of block ``layer`` by the norm of its output at each token."""
        return cls(
            kind="head_output",
            hook_name=f"blocks.{layer}.attn.hook_z",
            index=int(head),
            layer=int(layer),
            label=label or f"L{layer}H{head} output",
        )

    @classmethod
    def head_attention(
        cls, layer: int, head: int, *, skip_first: bool = True, label: str | None = None
    ) -> Unit:
        """Head ``head`` of block ``layer`` by the attention each token receives."""
        return cls(
            kind="head_attention",
            hook_name=f"blocks.{layer}.attn.hook_pattern",
            index=int(head),
            layer=int(layer),
            skip_first=skip_first,
            label=label or f"L{layer}H{head} attention",
        )

    @classmethod
    def head_attention_to(cls, layer: int, head: int, token: int, *, label: str | None = None) -> Unit:
        """Head ``head`` of block ``layer`` by the attention each query pays to token id ``token``.

        Example:
            >>> Unit.head_attention_to(4, 2, model.to_single_token(" Paris"))
        """
        return cls(
            kind="head_attention_to",
            hook_name=f"blocks.{layer}.attn.hook_pattern",
            index=int(head),
            layer=int(layer),
            token=int(token),
            label=label or f"L{layer}H{head} attention to token {token}",
        )

    @classmethod
    def from_direction(
        cls, hook_name: str, direction: Float[Tensor, " _"], *, bias: float = 0.0, label: str | None = None
    ) -> Unit:
        """``x @ direction + bias`` at ``hook_name`` (a probe direction, a steering vector, ...).

        Example:
            >>> Unit.from_direction("blocks.6.hook_resid_post", probe.direction(6), label="plural")
        """
        direction = torch.as_tensor(direction).detach()
        if direction.ndim != 1:
            raise ValueError(f"a direction is one vector, got shape {tuple(direction.shape)}")
        return cls(
            kind="direction",
            hook_name=hook_name,
            direction=direction,
            bias=float(bias),
            label=label or f"{hook_name} direction",
        )

    # ------------------------------------------------------------------ reading
    def activation(
        self,
        model,
        value: Float[Tensor, "batch ..."],
        mask: AttentionMask | None = None,
        tokens: Tokens | None = None,
    ) -> Float[Tensor, "batch pos"]:
        """The unit's activation ``[batch, pos]`` (float32) from its hook's value;
        ``mask`` ``[batch, pos]`` (1 = real token) keeps padding queries out of
        ``head_attention``; ``head_attention_to`` needs the input ``tokens``."""
        if self.kind == "sae_latent":
            return encode_latents(self.sae, value)[..., self.index]
        if self.kind == "neuron":
            return value[..., self.index].float()
        if self.kind == "head_output":
            w_o = model.blocks[self.layer].attn.W_O[self.index]
            return (value[:, :, self.index] @ w_o).float().norm(dim=-1)
        if self.kind == "head_attention":
            pattern = value[:, self.index].float()  # [batch, q_pos, k_pos]
            if mask is not None:
                pattern = pattern * mask[:, :, None].to(pattern.dtype)
            received = pattern.amax(dim=1)
            if self.skip_first:
                received[:, 0] = 0.0
            return received
        if self.kind == "head_attention_to":
            if tokens is None:
                raise ValueError(f"unit {self.label!r} needs the input tokens to find token {self.token}")
            keys = (tokens == self.token).to(value.dtype)  # [batch, k_pos]
            return torch.einsum("bqk,bk->bq", value[:, self.index], keys).float()
        direction = self.direction.to(device=value.device, dtype=value.dtype)
        if value.shape[-1] != direction.shape[0]:
            raise ValueError(
                f"unit {self.label!r}: direction has {direction.shape[0]} entries but {self.hook_name} "
                f"has last axis {value.shape[-1]} (shape {tuple(value.shape)})"
            )
        return (value @ direction).float() + self.bias


def encode_latents(sae: Any, value: Tensor) -> Tensor:
    """``sae.encode(value)`` as float32 ``[batch, pos, d_sae]``, in the SAE's dtype and device."""
    parameter = next(iter(sae.parameters()), None) if hasattr(sae, "parameters") else None
    x = value if parameter is None else value.to(device=parameter.device, dtype=parameter.dtype)
    return sae.encode(x).float().to(value.device)
