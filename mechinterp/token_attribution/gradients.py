"""Gradient methods: integrated gradients, gradient x input, saliency.

- **Integrated gradients** (Sundararajan, Taly & Yan 2017): ``(a - a') * sum_k w_k grad f(a' +
  alpha_k (a - a'))`` at the site activation ``a`` against a baseline ``a'``, summed over the
  feature axis. Every (example, step) pair is one row, so all steps run as a few large
  batched forward/backward passes (chunked to a memory budget) rather than one pass per
  step. Completeness: the attributions sum to ``f(a) - f(a')`` up to quadrature error; the
  two end points are evaluated too, to report the gap.
- **Gradient x input** (Shrikumar et al. 2016): ``a . grad f(a)`` per position.
- **Saliency** (Simonyan et al. 2014): ``|grad f(a)|_2`` per position (a magnitude, no sign).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from mechinterp.token_attribution.runner import SiteRunner, over_chunks


@dataclass(frozen=True, eq=False)
class PathResult:
    """Integrated-gradients attributions ``[batch, pos, ...]`` (feature axis summed) and the
    objective at both ends of the path (``[batch]``)."""

    values: Tensor
    score: Tensor
    baseline_score: Tensor


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def integrated_gradients(
    runner: SiteRunner,
    actual: Float[Tensor, "batch pos ..."],
    baseline: Float[Tensor, "batch pos ..."],
    alphas: Float[Tensor, " step"],
    weights: Float[Tensor, " step"],
    chunk: int,
) -> PathResult:
    """Integrated gradients of ``runner``'s objective from ``baseline`` to ``actual``."""
    batch, steps = actual.shape[0], alphas.shape[0]
    device = actual.device
    delta = actual - baseline
    total = torch.zeros(actual.shape, dtype=_accumulation_dtype(actual.dtype), device=device)
    alphas = alphas.to(device)
    weights = weights.to(device)

    def work(start: int, end: int) -> None:
        rows = torch.arange(start, end, device=device)
        examples, step = rows // steps, rows % steps
        shape = (-1, *[1] * (actual.ndim - 1))
        alpha = alphas[step].to(actual.dtype).reshape(shape)
        point = (baseline[examples] + alpha * delta[examples]).requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(runner.scores(examples, point).sum(), point)
        weighted = gradient.to(total.dtype) * weights[step].to(total.dtype).reshape(shape)
        total.index_add_(0, examples, weighted)

    over_chunks(batch * steps, chunk, work, device)
    values = (delta.to(total.dtype) * total).sum(-1)
    ends = end_points(runner, actual, baseline, chunk)
    return PathResult(values, ends[:batch], ends[batch:])


@torch.no_grad()
def end_points(runner: SiteRunner, actual: Tensor, baseline: Tensor, chunk: int) -> Tensor:
    """``[2 * batch]``: the objective at the actual activation, then at the baseline."""
    batch = actual.shape[0]
    stacked = torch.cat([actual, baseline])
    examples = torch.arange(batch, device=actual.device).repeat(2)
    out = torch.empty(2 * batch, dtype=_accumulation_dtype(actual.dtype), device=actual.device)

    def work(start: int, end: int) -> None:
        out[start:end] = runner.scores(examples[start:end], stacked[start:end])

    over_chunks(2 * batch, chunk, work, actual.device)
    return out


def objective_at(runner: SiteRunner, actual: Float[Tensor, "batch pos ..."], chunk: int) -> Tensor:
    """The objective ``[batch]`` at the actual activations (no gradients)."""
    return end_points(runner, actual, actual, chunk)[: actual.shape[0]]


def input_gradients(
    runner: SiteRunner, actual: Float[Tensor, "batch pos ..."], chunk: int
) -> tuple[Tensor, Tensor]:
    """``(gradient of the objective at actual [batch, pos, ...], objective [batch])``."""
    device = actual.device
    gradient = torch.zeros_like(actual)
    score = torch.zeros(actual.shape[0], dtype=_accumulation_dtype(actual.dtype), device=device)

    def work(start: int, end: int) -> None:
        examples = torch.arange(start, end, device=device)
        point = actual[start:end].clone().requires_grad_(True)
        with torch.enable_grad():
            value = runner.scores(examples, point)
            (grad,) = torch.autograd.grad(value.sum(), point)
        gradient[start:end] = grad
        score[start:end] = value.detach()

    over_chunks(actual.shape[0], chunk, work, device)
    return gradient, score
