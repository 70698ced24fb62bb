"""Probe directions as interventions: is the readable direction also used by the model?

Ablating a direction projects it out of the residual stream at one layer; adding one moves
the residual stream along it. Comparing a metric with and without the intervention tells
whether the model *uses* what a probe can *read* (Elazar et al. 2021; Marks & Tegmark 2023).

Example:
    >>> direction = result.direction(result.best_layer)
    >>> effect = direction_effect(model, tokens, metric, direction, layer=result.best_layer, mode="ablate")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from mechinterp.dims import AttentionMask, Tokens
from mechinterp.metrics import MetricFn

Mode = Literal["ablate", "add"]


def direction_hook(
    direction: Float[Tensor, " d_model"], *, mode: Mode = "ablate", scale: float = 1.0
) -> Callable:
    """A forward hook that projects ``direction`` out (``"ablate"``) or adds ``scale`` times
    its unit vector (``"add"``) at every position."""
    if mode not in ("ablate", "add"):
        raise ValueError(f"mode must be 'ablate' or 'add', got {mode!r}")
    unit = direction / direction.norm()

    def hook(residual: Tensor, hook) -> Tensor:
        u = unit.to(residual.device, residual.dtype)
        if mode == "ablate":
            return residual - (residual @ u)[..., None] * u
        return residual + scale * u

    return hook


@torch.no_grad()
def direction_effect(
    model,
    tokens: Tokens,
    metric: MetricFn,
    direction: Float[Tensor, " d_model"],
    *,
    layer: int,
    hook: str = "hook_resid_post",
    mode: Mode = "ablate",
    scale: float = 1.0,
    attention_mask: AttentionMask | None = None,
) -> tuple[Float[Tensor, "*batch"], Float[Tensor, "*batch"]]:
    """``(metric without, metric with)`` the intervention at ``blocks.{layer}.{hook}``."""
    name = f"blocks.{layer}.{hook}"
    before = metric(model(tokens, attention_mask=attention_mask))
    after = metric(
        model.run_with_hooks(
            tokens,
            attention_mask=attention_mask,
            fwd_hooks=[(name, direction_hook(direction, mode=mode, scale=scale))],
        )
    )
    return before, after
