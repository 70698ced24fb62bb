"""Streaming per-feature statistics of a corpus, and the log-odds statistic that compares two.

``FeatureCounts`` holds, per dictionary feature, how many tokens and how many windows it
fires on and the sum of its activations: a fixed-size state (``3 * d_sae`` numbers and three
totals) updated batch by batch, so reading a longer corpus never needs more memory.

``log_odds`` compares two firing counts with the **log-odds ratio with an informative
Dirichlet prior** of Monroe, Colaresi and Quinn (2008, "Fightin' Words", Political Analysis
16(4)), specialised to two outcomes (fires / does not fire), i.e. a beta prior:

    p      = (y_a + y_b + 1/2) / (n_a + n_b + 1)            pooled firing rate
    alpha  = s * p,  beta = s * (1 - p)                      prior of strength s (pseudo-counts)
    delta  = log((y_b + alpha) / (n_b - y_b + beta)) - log((y_a + alpha) / (n_a - y_a + beta))
    var    = 1/(y_b + alpha) + 1/(n_b - y_b + beta) + 1/(y_a + alpha) + 1/(n_a - y_a + beta)

``delta > 0``: the feature fires more often in corpus B. ``z = delta / sqrt(var)``; the
prior pulls rare features' differences toward zero, so a feature seen twice does not top
the ranking. Counts are treated as independent draws: with windows as the unit (the
default of ``diff_corpora``) that is closer to true than with tokens, which cluster within
a text; the held-out replication in ``diff_corpora`` is the check that does not rely on it.

Example:
    >>> delta, se = log_odds(torch.tensor([3.0]), 100, torch.tensor([40.0]), 100, prior=10.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Shaped
from torch import Tensor


@dataclass(eq=False)
class FeatureCounts:
    """Per-feature firing counts and activation sums over a stream of batches.

    Attributes:
        d_sae: number of features; ``threshold``: a feature fires where its activation exceeds it.
        tokens, windows: totals seen; ``token_fires``, ``window_fires``, ``activation_sum``:
            ``[d_sae]`` float64 tensors (on the CPU).
    """

    d_sae: int
    threshold: float = 0.0
    tokens: int = 0
    windows: int = 0
    token_fires: Float[Tensor, " d_sae"] = field(init=False)
    window_fires: Float[Tensor, " d_sae"] = field(init=False)
    activation_sum: Float[Tensor, " d_sae"] = field(init=False)

    def __post_init__(self) -> None:
        self.token_fires = torch.zeros(self.d_sae, dtype=torch.float64)
        self.window_fires = torch.zeros(self.d_sae, dtype=torch.float64)
        self.activation_sum = torch.zeros(self.d_sae, dtype=torch.float64)

    @torch.no_grad()
    def update(self, acts: Float[Tensor, "batch pos d_sae"], mask: Shaped[Tensor, "batch pos"]) -> None:
        """Add a batch: ``acts`` of every window's tokens, ``mask [batch, pos]`` true on the
        tokens that count (not padding, not BOS)."""
        if acts.shape[-1] != self.d_sae:
            raise ValueError(f"expected {self.d_sae} features, got acts of shape {tuple(acts.shape)}")
        keep = mask.bool().to(acts.device)
        acts = acts.float().masked_fill(~keep[..., None], 0.0)
        fires = acts > self.threshold
        self.tokens += int(keep.sum())
        self.windows += int(keep.any(-1).sum())
        self.token_fires += fires.sum((0, 1)).double().cpu()
        self.window_fires += fires.any(1).sum(0).double().cpu()
        self.activation_sum += acts.sum((0, 1)).double().cpu()

    def merged(self, other: FeatureCounts) -> FeatureCounts:
        """The counts of both streams together."""
        out = FeatureCounts(self.d_sae, self.threshold)
        out.tokens, out.windows = self.tokens + other.tokens, self.windows + other.windows
        out.token_fires = self.token_fires + other.token_fires
        out.window_fires = self.window_fires + other.window_fires
        out.activation_sum = self.activation_sum + other.activation_sum
        return out

    def fires(self, level: str) -> tuple[Float[Tensor, " d_sae"], int]:
        """``(fire counts [d_sae], total)`` at ``level`` ``"token"`` or ``"window"``."""
        if level == "token":
            return self.token_fires, self.tokens
        if level == "window":
            return self.window_fires, self.windows
        raise ValueError(f"level must be 'token' or 'window', got {level!r}")

    def state_nbytes(self) -> int:
        """Bytes held by the accumulated state (independent of how much was read)."""
        return sum(
            t.numel() * t.element_size() for t in (self.token_fires, self.window_fires, self.activation_sum)
        )


def log_odds(
    y_a: Float[Tensor, " d_sae"], n_a: int, y_b: Float[Tensor, " d_sae"], n_b: int, *, prior: float = 10.0
) -> tuple[Float[Tensor, " d_sae"], Float[Tensor, " d_sae"]]:
    """``(delta, standard error)``: the prior-smoothed log-odds ratio of firing in B vs A
    (module docstring). ``prior`` is the prior's strength in pseudo-counts (> 0)."""
    if prior <= 0:
        raise ValueError(f"prior must be positive (pseudo-counts), got {prior}")
    if min(n_a, n_b) <= 0:
        raise ValueError(f"both corpora need at least one counted unit, got n_a={n_a}, n_b={n_b}")
    y_a, y_b = y_a.double(), y_b.double()
    pooled = (y_a + y_b + 0.5) / (n_a + n_b + 1)
    alpha, beta = prior * pooled, prior * (1 - pooled)
    terms = (y_b + alpha, n_b - y_b + beta, y_a + alpha, n_a - y_a + beta)
    delta = (terms[0] / terms[1]).log() - (terms[2] / terms[3]).log()
    se = sum(1 / t for t in terms).sqrt()
    return delta, se
