"""What an attribution explains: a logit (difference) at one position, or the log-probability
of a continuation.

An objective says which sequences the model runs (the prompt alone, or the prompt followed by
each continuation: its *variants*) and turns the final residual stream of those runs into one
number per row. Every method calls ``score`` on its own batched rows, so the target is
defined in exactly one place.

- ``LogitObjective``: ``logit[correct]`` or ``logit[correct] - logit[incorrect]`` at each
  example's answer position. Only the answer position is normalised and only the answer
  columns of the unembedding are read. The logits are the model's own: soft-capped where
  the family caps them (Gemma 2: ``c * tanh(logit / c)``, each logit before the difference),
  as ``model(tokens)`` and Hugging Face return them.
- ``ContinuationObjective``: ``sum_j log p(c_j | prompt, c_<j)`` over the continuation's
  tokens, minus the same for the ``incorrect`` continuation when there is one. The prompt
  must end at its last column (left padding), so a continuation is appended after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True, eq=False, kw_only=True)
class LogitObjective:
    """``correct`` / ``incorrect`` token ids ``[batch]`` read at ``positions`` ``[batch]``."""

    positions: Int[Tensor, " batch"]
    correct: Int[Tensor, " batch"]
    incorrect: Int[Tensor, " batch"] | None = None

    variants = 1

    def sequences(
        self, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"]
    ) -> tuple[Int[Tensor, "variant batch _pos"], Int[Tensor, "variant batch _pos"]]:
        return tokens[None], mask[None]

    def score(self, model, residual: Float[Tensor, "row pos d_model"], examples: Tensor) -> Tensor:
        """``[row]`` values from the final residual stream of rows of ``examples``
        (variant-major when there are several variants; here one)."""
        device = residual.device
        examples = examples.to(device)
        rows = torch.arange(residual.shape[0], device=device)
        read = model.ln_final(residual[rows, self.positions.to(device)[examples]])
        value = model.unembed.logit_of(read, self.correct.to(device)[examples])
        if self.incorrect is not None:
            value = value - model.unembed.logit_of(read, self.incorrect.to(device)[examples])
        return value

    def describe(self, model) -> str:
        def name(ids: Tensor) -> str:  # the first example's answer; "..." when they differ
            return _token_text(model, ids[:1]) + ("" if bool((ids == ids[0]).all()) else ", ...")

        text = f"logit[{name(self.correct)}]"
        return text if self.incorrect is None else f"{text} - logit[{name(self.incorrect)}]"


@dataclass(frozen=True, eq=False, kw_only=True)
class ContinuationObjective:
    """Continuations ``[batch, k]`` (right-padded, ``*_mask`` 1 for real tokens) appended after
    prompts whose last column is real in every row."""

    correct: Int[Tensor, "batch answer"]
    correct_mask: Int[Tensor, "batch answer"]
    incorrect: Int[Tensor, "batch _answer"] | None = None
    incorrect_mask: Int[Tensor, "batch _answer"] | None = None

    @property
    def variants(self) -> int:
        return 1 if self.incorrect is None else 2

    def _continuations(self) -> list[tuple[Tensor, Tensor]]:
        found = [(self.correct, self.correct_mask)]
        if self.incorrect is not None:
            found.append((self.incorrect, self.incorrect_mask))
        width = max(tokens.shape[1] for tokens, _ in found)
        return [
            (
                torch.nn.functional.pad(tokens, (0, width - tokens.shape[1])),
                torch.nn.functional.pad(mask, (0, width - mask.shape[1])),
            )
            for tokens, mask in found
        ]

    def sequences(
        self, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"]
    ) -> tuple[Int[Tensor, "variant batch _pos"], Int[Tensor, "variant batch _pos"]]:
        device = tokens.device
        full = [
            (torch.cat([tokens, c.to(device)], 1), torch.cat([mask, m.to(device)], 1))
            for c, m in self._continuations()
        ]
        return torch.stack([t for t, _ in full]), torch.stack([m for _, m in full])

    def score(self, model, residual: Float[Tensor, "row pos d_model"], examples: Tensor) -> Tensor:
        """``[row]``: summed log-probabilities; rows are variant-major (all rows of the correct
        continuation, then all rows of the incorrect one)."""
        device = residual.device
        examples = examples.to(device)
        width = self._continuations()[0][0].shape[1]
        n_prompt = residual.shape[1] - width
        logits = model.unembed(model.ln_final(residual[:, n_prompt - 1 : -1]))
        log_probs = logits.float().log_softmax(-1)
        per_variant = []
        for variant, (tokens, mask) in enumerate(self._continuations()):
            part = slice(variant * len(examples), (variant + 1) * len(examples))
            picked = log_probs[part].gather(-1, tokens.to(device)[examples][..., None])[..., 0]
            per_variant.append((picked * mask.to(device)[examples]).sum(-1))
        value = per_variant[0] if len(per_variant) == 1 else per_variant[0] - per_variant[1]
        return value.to(residual.dtype)

    def describe(self, model) -> str:
        def text(tokens: Tensor, mask: Tensor) -> str:
            return _token_text(model, tokens[0][mask[0].bool()])

        first = f"log p({text(self.correct, self.correct_mask)})"
        if self.incorrect is None:
            return first
        return f"{first} - log p({text(self.incorrect, self.incorrect_mask)})"


Objective = LogitObjective | ContinuationObjective


def _token_text(model, ids: Tensor) -> str:
    """The text of token ids ``[n]`` (the ids themselves when the model has no tokenizer)."""
    try:
        return repr(model.to_string(ids.tolist()))
    except ValueError:
        return str(ids.tolist())
