"""Patching metrics: logit difference, probability difference, KL divergence, normalised.

A *positional* metric knows which position it reads in each example (``positions``,
``[batch]``) and scores logits at those positions only (``score``: ``[row, d_vocab]`` ->
``[row]``). The patching engine uses this to unembed one position per row instead of all
of them. Calling a metric on full logits ``[batch, pos, d_vocab]`` gives one value per
example, so every metric also works as a TransformerLens-style metric function
(``reduce="mean"`` on the metric averages over examples).

Example:
    >>> mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    >>> metric = LogitDifference.last_position(mask, correct=[mary], incorrect=[john])
    >>> metric(model(tokens, attention_mask=mask))        # tensor([3.52])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechinterp.dims import AttentionMask, Logits

Reduce = Literal["mean", "none"]
# A TransformerLens-style metric: logits to one number, or one number per example.
MetricFn = Callable[[Logits], Float[Tensor, "*batch"]]


@runtime_checkable
class PositionalMetric(Protocol):
    """A metric that reads one position per example."""

    positions: Int[Tensor, " batch"]

    def score(
        self, logits: Float[Tensor, "row d_vocab"], examples: Int[Tensor, " row"]
    ) -> Float[Tensor, " row"]:
        """Values ``[row]`` from logits ``[row, d_vocab]`` of rows belonging to ``examples``."""
        ...


def last_positions(attention_mask: AttentionMask) -> Int[Tensor, " batch"]:
    """Index of each example's last real token (right or left padding)."""
    n_pos = attention_mask.shape[1]
    idx = torch.arange(n_pos, device=attention_mask.device)
    return torch.where(attention_mask.bool(), idx, -1).amax(dim=1)


def _as_long(values: Sequence[int] | Tensor, name: str) -> Tensor:
    tensor = torch.as_tensor(values, dtype=torch.long)
    if tensor.ndim != 1:
        raise ValueError(f"{name} must be one value per example, got shape {tuple(tensor.shape)}")
    return tensor


class _PositionalBase:
    positions: Tensor
    reduce: Reduce

    def _check_batch(self, *tensors: Tensor) -> None:
        sizes = {t.shape[0] for t in tensors} | {self.positions.shape[0]}
        if len(sizes) != 1:
            raise ValueError(f"per-example arguments have different lengths: {sorted(sizes)}")

    def __call__(self, logits: Logits) -> Float[Tensor, "*batch"]:
        batch = logits.shape[0]
        if batch != self.positions.shape[0]:
            raise ValueError(f"metric was built for {self.positions.shape[0]} examples, logits have {batch}")
        rows = torch.arange(batch, device=logits.device)
        values = self.score(logits[rows, self.positions.to(logits.device)], rows)
        return values.mean() if self.reduce == "mean" else values


@dataclass(frozen=True, eq=False)
class LogitDifference(_PositionalBase):
    """``logit[correct] - logit[incorrect]`` at each example's answer position."""

    positions: Int[Tensor, " batch"]
    correct: Int[Tensor, " batch"]
    incorrect: Int[Tensor, " batch"]
    reduce: Reduce = "mean"

    def __post_init__(self) -> None:
        self._check_batch(self.correct, self.incorrect)

    @classmethod
    def last_position(
        cls,
        attention_mask: AttentionMask,
        *,
        correct: Sequence[int] | Int[Tensor, " batch"],
        incorrect: Sequence[int] | Int[Tensor, " batch"],
        reduce: Reduce = "mean",
    ) -> LogitDifference:
        """Read each example at its last real token (``attention_mask``: ``[batch, pos]``)."""
        return cls(
            last_positions(attention_mask).cpu(),
            _as_long(correct, "correct"),
            _as_long(incorrect, "incorrect"),
            reduce,
        )

    @classmethod
    def from_answers(
        cls,
        model,
        attention_mask: AttentionMask,
        *,
        correct: Sequence[str],
        incorrect: Sequence[str],
        reduce: Reduce = "mean",
    ) -> LogitDifference:
        """Answers as strings (one single-token answer per example, e.g. ``" Mary"``), read
        at each example's last real token.

        Raises:
            ValueError: if an answer is not exactly one token.
        """
        ids = [[model.to_single_token(answer) for answer in answers] for answers in (correct, incorrect)]
        return cls.last_position(attention_mask, correct=ids[0], incorrect=ids[1], reduce=reduce)

    def score(
        self, logits: Float[Tensor, "row d_vocab"], examples: Int[Tensor, " row"]
    ) -> Float[Tensor, " row"]:
        rows = torch.arange(logits.shape[0], device=logits.device)
        examples = examples.to(logits.device)
        right = logits[rows, self.correct.to(logits.device)[examples]]
        wrong = logits[rows, self.incorrect.to(logits.device)[examples]]
        return right - wrong


@dataclass(frozen=True, eq=False)
class ProbabilityDifference(LogitDifference):
    """``p[correct] - p[incorrect]`` (softmax over the vocabulary) at each answer position;
    built like ``LogitDifference`` (``last_position``, ``from_answers``)."""

    def score(
        self, logits: Float[Tensor, "row d_vocab"], examples: Int[Tensor, " row"]
    ) -> Float[Tensor, " row"]:
        return super().score(logits.float().softmax(-1), examples)


@dataclass(frozen=True, eq=False)
class KLDivergence(_PositionalBase):
    """``KL(reference || patched)`` of next-token distributions at each example's position.

    ``reference_logits``: ``[batch, d_vocab]``, usually the clean run's logits there.
    """

    positions: Int[Tensor, " batch"]
    reference_logits: Float[Tensor, "batch d_vocab"]
    reduce: Reduce = "mean"

    def __post_init__(self) -> None:
        self._check_batch(self.reference_logits)

    def score(
        self, logits: Float[Tensor, "row d_vocab"], examples: Int[Tensor, " row"]
    ) -> Float[Tensor, " row"]:
        reference = (
            self.reference_logits.to(logits.device)[examples.to(logits.device)].float().log_softmax(-1)
        )
        patched = logits.float().log_softmax(-1)
        return (reference.exp() * (reference - patched)).sum(-1)


@dataclass(frozen=True, eq=False)
class Normalized(_PositionalBase):
    """``(metric - corrupted) / (clean - corrupted)``: 0 = corrupted run, 1 = clean run.

    ``clean`` and ``corrupted`` are the wrapped metric's values on the two unpatched runs,
    per example (``[batch]``) or one number each.
    """

    metric: PositionalMetric
    clean: Float[Tensor, "*batch"]
    corrupted: Float[Tensor, "*batch"]
    reduce: Reduce = "mean"

    @property
    def positions(self) -> Int[Tensor, " batch"]:  # type: ignore[override]
        return self.metric.positions

    def score(
        self, logits: Float[Tensor, "row d_vocab"], examples: Int[Tensor, " row"]
    ) -> Float[Tensor, " row"]:
        raw = self.metric.score(logits, examples)
        clean, corrupted = (
            torch.as_tensor(v, device=raw.device, dtype=raw.dtype) for v in (self.clean, self.corrupted)
        )
        if clean.ndim:
            clean, corrupted = clean[examples.to(raw.device)], corrupted[examples.to(raw.device)]
        return (raw - corrupted) / (clean - corrupted)


@dataclass(frozen=True, eq=False)
class GreaterThan(_PositionalBase):
    """``p(value > threshold) - p(value <= threshold)`` at each example's answer position:
    the probability mass on answers above the example's threshold minus the mass at or below
    it (Hanna et al. 2023's greater-than metric, "probability difference").

    ``value_tokens`` ``[answer]``: the token of each value ``0, 1, ...`` in order (two-digit
    years ``"00".."99"``, or the digits ``"0".."9"``); ``thresholds`` ``[batch]``: each
    example's value (e.g. the start year's last two digits).

    Example:
        >>> metric = GreaterThan(positions, value_tokens=digit_ids, thresholds=torch.tensor([3, 5]))
        >>> metric(logits)     # mean over examples of p(> 3 | > 5) - p(<= 3 | <= 5)
    """

    positions: Int[Tensor, " batch"]
    value_tokens: Int[Tensor, " answer"]
    thresholds: Int[Tensor, " batch"]
    reduce: Reduce = "mean"

    def __post_init__(self) -> None:
        self._check_batch(self.thresholds)
        if int(self.thresholds.min()) < 0 or int(self.thresholds.max()) >= len(self.value_tokens):
            raise ValueError(
                f"thresholds must lie in 0..{len(self.value_tokens) - 1} (one value token each), "
                f"got {self.thresholds.tolist()}"
            )

    def score(
        self, logits: Float[Tensor, "row d_vocab"], examples: Int[Tensor, " row"]
    ) -> Float[Tensor, " row"]:
        probs = logits.float().softmax(-1)[:, self.value_tokens.to(logits.device)]
        values = torch.arange(len(self.value_tokens), device=logits.device)
        above = values[None] > self.thresholds.to(logits.device)[examples.to(logits.device)][:, None]
        return (probs * above).sum(-1) - (probs * ~above).sum(-1)
