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

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from mechinterp.metrics import LogitDifference


@dataclass(frozen=True, eq=False)
class PositionSpans:
    """Labelled groups of token positions, per example: ``ids[b, p]`` is the index in
    ``labels`` of the span that position ``p`` of example ``b`` belongs to. The position
    axis of position-aware circuits (``circuits.positional``): one span per position
    (``per_position``), or named parts of a prompt ("io", "s1", "s2", "end", "other" for
    IOI) that may sit at different positions in different examples.

    Example:
        >>> spans = PositionSpans.per_position(batch=8, n_pos=15)
        >>> spans.labels[:3], spans.ids.shape
        (('0', '1', '2'), torch.Size([8, 15]))
    """

    labels: tuple[str, ...]
    ids: Int[Tensor, "batch pos"]

    def __post_init__(self) -> None:
        if self.ids.ndim != 2:
            raise ValueError(f"ids must be [batch, pos], got {tuple(self.ids.shape)}")
        if self.ids.numel() and (int(self.ids.min()) < 0 or int(self.ids.max()) >= len(self.labels)):
            raise ValueError(f"ids must lie in 0..{len(self.labels) - 1} (one per label {self.labels})")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"span labels must be distinct, got {self.labels}")

    @classmethod
    def per_position(cls, batch: int, n_pos: int) -> PositionSpans:
        """One span per position, labelled ``"0"``, ``"1"``, ..."""
        ids = torch.arange(n_pos, device="cpu").expand(batch, n_pos).clone()
        return cls(tuple(str(p) for p in range(n_pos)), ids)

    @classmethod
    def from_positions(
        cls, n_pos: int, named: dict[str, Sequence[int] | Int[Tensor, " batch"]], *, rest: str = "other"
    ) -> PositionSpans:
        """Spans from each label's position per example (``named[label][b]``); every other
        position belongs to ``rest`` (the first label)."""
        batch = len(next(iter(named.values())))
        ids = torch.zeros(batch, n_pos, dtype=torch.long, device="cpu")
        rows = torch.arange(batch, device="cpu")
        for index, positions in enumerate(named.values(), start=1):
            ids[rows, torch.as_tensor(positions, dtype=torch.long, device="cpu")] = index
        return cls((rest, *named), ids)

    @property
    def n_spans(self) -> int:
        return len(self.labels)

    def select(self, count: int) -> PositionSpans:
        """The spans of the first ``count`` examples."""
        return PositionSpans(self.labels, self.ids[:count])


@dataclass(frozen=True, eq=False, kw_only=True)
class PromptPairs:
    """``clean`` / ``corrupt`` tokens ``[batch, pos]``; per example the ``correct`` (clean)
    and ``incorrect`` (corrupt) answer token ids and the answer ``positions``.
    ``attention_mask`` is ``None`` when no row is padded. ``spans`` (optional) labels parts of
    the prompts (``PositionSpans``), for position-aware circuits."""

    clean: Int[Tensor, "batch pos"]
    corrupt: Int[Tensor, "batch pos"]
    correct: Int[Tensor, " batch"]
    incorrect: Int[Tensor, " batch"]
    positions: Int[Tensor, " batch"]
    attention_mask: Int[Tensor, "batch pos"] | None = None
    spans: PositionSpans | None = None

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
        if self.spans is not None and tuple(self.spans.ids.shape) != (batch, n_pos):
            raise ValueError(
                f"spans must label [{batch}, {n_pos}] positions, got {tuple(self.spans.ids.shape)}"
            )

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
            spans=None if self.spans is None else self.spans.select(count),
        )
