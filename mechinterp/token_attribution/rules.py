"""Quadrature rules for the path integral of integrated gradients.

Integrated gradients (Sundararajan et al. 2017) attributes ``f(x) - f(x')`` to the inputs as
``(x - x') * integral_0^1 grad f(x' + a (x - x')) da``. The integral is a weighted sum of
gradients at points ``a_k`` with weights ``w_k``:

- ``gauss_legendre``: the Gauss-Legendre nodes on [0, 1]; exact for polynomials of degree
  ``2 * steps - 1``, so it converges much faster than Riemann sums (captum's default);
- ``riemann_left`` / ``riemann_right`` / ``riemann_middle``: equal weights ``1 / steps`` at the
  left ends, right ends or midpoints of ``steps`` equal intervals;
- ``riemann_trapezoid``: ``steps`` equally spaced points from 0 to 1, weight ``1 / (steps - 1)``,
  the two ends at half weight.

The points and weights are captum 0.9's, so the same rule and step count give the same sum,
except for the trapezoid rule: captum weights its points ``1 / steps`` (ends halved), which
sum to ``1 - 1 / steps``, so its trapezoid attributions are ours times ``(steps - 1) / steps``.

Example:
    >>> alphas, weights = integration_points("gauss_legendre", 4)
    >>> float(weights.sum())
    1.0
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

IntegrationRule = Literal[
    "gauss_legendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
]
RULES: tuple[str, ...] = IntegrationRule.__args__


def integration_points(
    rule: IntegrationRule, steps: int
) -> tuple[Float[Tensor, " step"], Float[Tensor, " step"]]:
    """Points ``alpha`` in [0, 1] and their weights (float64, on the CPU) for ``steps`` evaluations.

    Raises:
        ValueError: ``steps < 1`` (``< 2`` for the trapezoid rule, which needs both ends), or
            an unknown rule.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"steps must be an integer >= 1 (gradient evaluations along the path), got {steps!r}"
        )
    if rule == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (1 + nodes)), torch.from_numpy(0.5 * weights)
    if rule not in RULES:
        raise ValueError(f"unknown integration rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("the riemann_trapezoid rule needs steps >= 2 (it evaluates both ends)")
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64, device="cpu")
        weights[0] /= 2
        weights[-1] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64, device="cpu"), weights
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64, device="cpu")
    first = {"riemann_left": 0.0, "riemann_right": 1.0 / steps, "riemann_middle": 0.5 / steps}[rule]
    return first + torch.arange(steps, dtype=torch.float64, device="cpu") / steps, weights
