"""Paired prompts: the input of patching sweeps, attribution and circuit discovery.

A ``PromptPairs`` holds clean and corrupt token batches of the same shape, the answer the
clean run should give and the answer the corrupt run gives, and the position where each
example's answer is predicted. ``metric()`` turns it into the logit-difference metric the
rest of the toolkit takes.

Example:
    >>> pairs = PromptPairs(clean, corrupt, correct=mary_ids, incorrect=john_ids, positions=last)
    >>> metric = pairs.metric()                 # LogitDifference at each answer position
    >>> patch_sweep(model, pairs.clean, pairs.corrupt, SweepSpec(kind="resid_pre"), metric)
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Int
from torch import Tensor

from mechinterp.metrics import LogitDifference


@dataclass(frozen=True, eq=False, kw_only=True)
class PromptPairs:
    """``clean`` / ``corrupt`` tokens ``[batch, pos]``; per example the ``correct`` (clean)
    and ``incorrect`` (corrupt) answer token ids and the answer ``positions``.
    ``attention_mask`` is ``None`` when no row is padded."""

    clean: Int[Tensor, "batch pos"]
    corrupt: Int[Tensor, "batch pos"]
    correct: Int[Tensor, " batch"]
    incorrect: Int[Tensor, " batch"]
    positions: Int[Tensor, " batch"]
    attention_mask: Int[Tensor, "batch pos"] | None = None

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupt.shape:
            raise ValueError(
                f"clean {tuple(self.clean.shape)} and corrupt {tuple(self.corrupt.shape)} tokens differ in shape"
            )
        batch, n_pos = self.clean.shape
        for name in ("correct", "incorrect", "positions"):
            if getattr(self, name).shape != (batch,):
                raise ValueError(
                    f"{name} must be [{batch}] (one per example), got {tuple(getattr(self, name).shape)}"
                )
        if int(self.positions.min()) < 0 or int(self.positions.max()) >= n_pos:
            raise ValueError(f"positions must lie in 0..{n_pos - 1}, got {self.positions.tolist()}")

    def __len__(self) -> int:
        return self.clean.shape[0]

    def metric(self) -> LogitDifference:
        """``logit[correct] - logit[incorrect]`` at each example's answer position."""
        return LogitDifference(self.positions, self.correct, self.incorrect)

    def select(self, count: int) -> PromptPairs:
        """The first ``count`` pairs."""
        mask = None if self.attention_mask is None else self.attention_mask[:count]
        return PromptPairs(
            clean=self.clean[:count],
            corrupt=self.corrupt[:count],
            correct=self.correct[:count],
            incorrect=self.incorrect[:count],
            positions=self.positions[:count],
            attention_mask=mask,
        )
