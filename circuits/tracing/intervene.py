"""Interventions on transcoder features, to check what an attribution graph claims.

``intervene`` sets chosen features ``(layer, pos, index)`` to new activations (zero to ablate,
``c * a`` to scale) and reports the next-token logits at the last position, in one of two models:

- ``frozen=True``, the **frozen replacement** the graph describes: attention patterns, norm
  scales, error nodes *and every other feature* stay at their values on the prompt. Its logit
  change is linear in the changes and equals the graph's prediction
  (``AttributionGraph.predicted_change``) exactly: the check that the edges are right.
- ``frozen=False``, the **real model** with the transcoders spliced in: each MLP output is the
  transcoders' reconstruction from the *live* features, with the chosen ones overridden, plus the
  error held at its value on the prompt (as SAELens splices with an error term); attention,
  norms and later features respond. Without changes this is the model itself. The graph only
  approximates this effect.

Example:
    >>> result = intervene(model, tc, "The cat sat on the", {(1, 4, 17): 0.0}, frozen=True)
    >>> result.change[graph.logit_tokens]          # == graph.predicted_change(...)[logit nodes]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.tracing.replacement import FeatureKey, Replacement, apply_values
from circuits.tracing.trace import prompt_tokens
from circuits.tracing.transcoders import Transcoder
from mechinterp.dims import Tokens


@dataclass(frozen=True, eq=False)
class Intervention:
    """Logits at the last position before and after an intervention.

    ``clean_logits`` / ``logits``: as the model outputs them (soft-capped where the family caps);
    ``clean_centred`` / ``centred``: uncapped logits minus their mean (what the graph's logit
    nodes hold); ``change = centred - clean_centred``."""

    clean_logits: Float[Tensor, " d_vocab"]
    logits: Float[Tensor, " d_vocab"]
    clean_centred: Float[Tensor, " d_vocab"]
    centred: Float[Tensor, " d_vocab"]
    frozen: bool

    @property
    def change(self) -> Float[Tensor, " d_vocab"]:
        return self.centred - self.clean_centred


def intervene(
    model: Any,
    transcoders: Transcoder,
    prompt: str | Int[Tensor, " pos"] | Tokens,
    changes: Mapping[FeatureKey, float],
    *,
    frozen: bool = True,
) -> Intervention:
    """Set features ``(layer, pos, index) -> value`` and report the logits (module docstring).
    In the frozen replacement only features active on the prompt can change (the graph's nodes).

    Example:
        >>> real = intervene(model, tc, prompt, {(0, 3, 5): 0.0}, frozen=False)
        >>> real.change[token] , graph.predicted_change({(0, 3, 5): 0.0})[graph.logit_node(0)]
    """
    rep = Replacement(model, transcoders, prompt_tokens(model, prompt))
    with torch.no_grad():
        _, clean_normed = rep.run([out[None] for out in rep.mlp_outputs()])
        if frozen:
            _, normed = rep.run([out[None] for out in rep.mlp_outputs(apply_values(rep.active, changes))])
        else:
            normed = _spliced_run(rep, changes)
        clean_uncapped = model.unembed.uncapped(clean_normed[0, -1]).float()
        uncapped = model.unembed.uncapped(normed[0, -1]).float()
        return Intervention(
            clean_logits=model.unembed(clean_normed[0, -1]).float(),
            logits=model.unembed(normed[0, -1]).float(),
            clean_centred=clean_uncapped - clean_uncapped.mean(),
            centred=uncapped - uncapped.mean(),
            frozen=frozen,
        )


def _spliced_run(rep: Replacement, changes: Mapping[FeatureKey, float]) -> Tensor:
    """The real model with live transcoder features (``changes`` overriding some) in place of
    its MLPs plus the prompt's error terms; returns the final residual after ``ln_final``."""
    model, tc = rep.model, rep.transcoders
    n_layers = model.architecture.n_layers
    for layer, pos, index in changes:
        if not (0 <= layer < n_layers and 0 <= pos < rep.n_pos and 0 <= index < tc.widths[layer]):
            raise ValueError(f"feature {(layer, pos, index)} is outside the model, prompt or transcoder")
    acts: list[Tensor] = []

    def read(layer: int) -> Callable:
        def hook(x: Tensor, hook: Any) -> None:
            a = tc.encode(layer, tc.transcoder_input(model, layer, x).to(tc.device))
            for (at, pos, index), value in changes.items():
                if at == layer:
                    a[:, pos, index] = value
            acts.append(a)

        return hook

    def write(layer: int) -> Callable:
        def hook(x: Tensor, hook: Any) -> Tensor:
            return tc.decode(layer, acts).to(x.device, x.dtype) + rep.errors[layer].to(x.device)

        return hook

    hooks = [(f"blocks.{layer}.hook_mlp_in", read(layer)) for layer in range(n_layers)]
    hooks += [(f"blocks.{layer}.hook_mlp_out", write(layer)) for layer in range(n_layers)]
    with model.hooks(fwd_hooks=hooks):
        final = model(rep.tokens, stop_at_layer=n_layers)
    return model.ln_final(final)
