"""Turning what a user passes (text, tokens, answers, baselines, prompt pairs) into tensors,
with a specific error for each thing that cannot work."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

from mechinterp.data.pairs import PromptPairs
from mechinterp.metrics import last_positions
from mechinterp.token_attribution.objective import ContinuationObjective, LogitObjective, Objective

Target = Literal["logit", "continuation"]
AttributionInput = str | list[str] | Int[Tensor, "*batch pos"] | PromptPairs
# one token per example ([batch]), or a continuation per example ([batch, answer]; 1: shared)
Answer = str | int | Sequence[str] | Sequence[int] | Int[Tensor, " _batch"] | Int[Tensor, "_batch _answer"]
# a corrupt prompt's token ids ([batch, pos], or one row for every example)
Baseline = int | str | list[str] | Int[Tensor, "*_batch _pos"]


class ZeroBaselineWarning(UserWarning):
    """A zero baseline on a model whose first norm is scale-invariant (RMSNorm)."""


def prompt_tokens(
    model, input: str | list[str] | Tensor, attention_mask: Tensor | None
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Token ids and mask; text is padded on the left, so every prompt ends at the last column."""
    if isinstance(input, (str, list)):
        if attention_mask is not None:
            raise ValueError("attention_mask goes with token ids; text input builds its own (left-padded)")
        return model.encode(input, padding_side="left")
    if not isinstance(input, Tensor) or input.is_floating_point() or input.ndim not in (1, 2):
        raise ValueError(
            f"input must be text, a list of texts, token ids [batch, pos] or PromptPairs; got {_describe(input)}"
        )
    tokens = (input[None] if input.ndim == 1 else input).to(model.device)
    if attention_mask is None:
        return tokens, torch.ones_like(tokens)
    mask = attention_mask[None] if attention_mask.ndim == 1 else attention_mask
    if tuple(mask.shape) != tuple(tokens.shape):
        raise ValueError(
            f"attention_mask {tuple(mask.shape)} does not match the tokens {tuple(tokens.shape)}"
        )
    if not bool(mask.bool().any(1).all()):
        raise ValueError("every example needs at least one real token (attention_mask row of zeros)")
    return tokens, mask.to(model.device, torch.long)


def answer_positions(positions: Sequence[int] | Tensor | None, mask: Tensor) -> Int[Tensor, " batch"]:
    """Each example's answer position: the last real token unless given."""
    if positions is None:
        return last_positions(mask)
    found = torch.as_tensor(positions, dtype=torch.long, device=mask.device).reshape(-1)
    batch, n_pos = mask.shape
    if found.shape[0] == 1 and batch > 1:
        found = found.expand(batch)
    if found.shape[0] != batch:
        raise ValueError(f"positions: {found.shape[0]} positions for {batch} examples")
    if int(found.min()) < 0 or int(found.max()) >= n_pos:
        raise ValueError(f"positions must lie in 0..{n_pos - 1}, got {found.tolist()}")
    padded = ~mask.bool()[torch.arange(batch, device=mask.device), found]
    if bool(padded.any()):
        raise ValueError(
            f"positions {found[padded].tolist()} are padding in examples {padded.nonzero()[:, 0].tolist()}"
        )
    return found


def single_tokens(model, answer: Answer, batch: int, name: str) -> Int[Tensor, " batch"]:
    """One answer token id per example (a single answer is used for every example)."""
    if isinstance(answer, Tensor):
        ids = answer.to(torch.long)
        if ids.ndim == 2 and ids.shape[1] == 1:
            ids = ids[:, 0]
        if ids.ndim > 1:
            raise ValueError(
                f"{name} has {ids.shape[-1]} tokens per example; a multi-token answer is a continuation: "
                "pass target='continuation' to attribute the sum of its log-probabilities"
            )
        values = ids.reshape(-1).tolist()
    else:
        items = [answer] if isinstance(answer, (str, int)) else list(answer)
        values = [_one_token(model, item, name) for item in items]
    if len(values) == 1:
        values = values * batch
    if len(values) != batch:
        raise ValueError(f"{name}: {len(values)} answers for {batch} examples (give one, or one per example)")
    ids = torch.tensor(values, dtype=torch.long, device=model.device)
    vocab = model.architecture.d_vocab
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"{name}: token ids must lie in [0, {vocab}), got {ids.tolist()}")
    return ids


def _one_token(model, item: str | int, name: str) -> int:
    if isinstance(item, bool) or not isinstance(item, (str, int)):
        raise ValueError(f"{name}: expected a string or a token id, got {_describe(item)}")
    if isinstance(item, int):
        return item
    ids = model._require_tokenizer().encode(item, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise ValueError(
            f"{name} {item!r} is {len(ids)} tokens {pieces}, not one; to attribute a multi-token answer pass "
            "target='continuation' (the sum of its log-probabilities)"
        )
    return ids[0]


def continuation_tokens(model, answer: Answer, batch: int, name: str) -> tuple[Tensor, Tensor]:
    """``[batch, k]`` continuation token ids and their mask (right-padded)."""
    if isinstance(answer, Tensor):
        ids = answer.to(torch.long)
        ids = ids[None] if ids.ndim == 1 else ids
        rows = [row.tolist() for row in (ids.expand(batch, -1) if ids.shape[0] == 1 else ids)]
    else:
        items = [answer] if isinstance(answer, (str, int)) else list(answer)
        tokenizer = None
        rows = []
        for item in items:
            if isinstance(item, str):
                tokenizer = tokenizer or model._require_tokenizer()
                rows.append(tokenizer.encode(item, add_special_tokens=False))
            elif isinstance(item, int) and not isinstance(item, bool):
                rows.append([item])
            else:
                rows.append(list(item))
        rows = rows * batch if len(rows) == 1 else rows
    if len(rows) != batch:
        raise ValueError(
            f"{name}: {len(rows)} continuations for {batch} examples (give one, or one per example)"
        )
    if not all(rows):
        raise ValueError(f"{name}: a continuation needs at least one token")
    width = max(len(row) for row in rows)
    tokens = torch.zeros(batch, width, dtype=torch.long, device=model.device)
    mask = torch.zeros(batch, width, dtype=torch.long, device=model.device)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long, device=model.device)
        mask[i, : len(row)] = 1
    return tokens, mask


def objective_for(
    model,
    target: Target,
    correct: Answer,
    incorrect: Answer | None,
    positions: Sequence[int] | Tensor | None,
    mask: Tensor,
) -> tuple[Objective, Tensor]:
    """The objective and each example's answer position (the last prompt token for a continuation)."""
    batch = mask.shape[0]
    if target == "logit":
        found = answer_positions(positions, mask)
        wrong = None if incorrect is None else single_tokens(model, incorrect, batch, "incorrect")
        return LogitObjective(
            positions=found, correct=single_tokens(model, correct, batch, "correct"), incorrect=wrong
        ), found
    if target != "continuation":
        raise ValueError(f"target must be 'logit' or 'continuation', got {target!r}")
    if positions is not None:
        raise ValueError("a continuation starts after the prompt's last token; positions= does not apply")
    if not bool(mask[:, -1].bool().all()):
        raise ValueError(
            "target='continuation' appends the continuation after each prompt, so every prompt must end at "
            "the last column: pad on the left (text input is padded on the left)"
        )
    tokens, token_mask = continuation_tokens(model, correct, batch, "correct")
    other = (None, None) if incorrect is None else continuation_tokens(model, incorrect, batch, "incorrect")
    objective = ContinuationObjective(
        correct=tokens, correct_mask=token_mask, incorrect=other[0], incorrect_mask=other[1]
    )
    return objective, torch.full((batch,), mask.shape[1] - 1, dtype=torch.long, device=mask.device)


def baseline_tokens(
    model, baseline: Baseline, tokens: Tensor, mask: Tensor
) -> tuple[Int[Tensor, "batch pos"] | None, str]:
    """Baseline token ids (``None`` for the zero baseline) and a description.

    ``"pad"``: the tokenizer's pad token at every position; an int: that token id; ``"zero"``:
    zero activations; text, a list of texts or token ids: a corrupt prompt of the same length.
    Padding positions of the input keep their tokens (they do not move).
    """
    if isinstance(baseline, str) and baseline == "zero":
        return None, "zero"
    if isinstance(baseline, str) and baseline == "pad":
        pad = model._require_tokenizer().pad_token_id
        if pad is None:
            raise ValueError("the tokenizer has no pad token; pass baseline=<token id> or 'zero'")
        return _repeated(model, pad, tokens, mask), f"pad token {pad}"
    if isinstance(baseline, int) and not isinstance(baseline, bool):
        return _repeated(model, baseline, tokens, mask), f"token {baseline}"
    if isinstance(baseline, (str, list)):
        other, other_mask = model.encode(baseline, padding_side="left")
        _same_length(other.shape, tokens.shape)
        if not torch.equal(other_mask, mask):
            lengths = (other_mask.sum(1).tolist(), mask.sum(1).tolist())
            raise ValueError(
                f"the baseline prompts have {lengths[0]} tokens but the input has {lengths[1]}; a corrupt-prompt "
                "baseline must tokenize to the same length as its input, example by example"
            )
        return other, "corrupt prompt"
    if isinstance(baseline, Tensor) and not baseline.is_floating_point() and baseline.ndim in (1, 2):
        other = (baseline[None] if baseline.ndim == 1 else baseline).to(model.device, torch.long)
        if other.shape[0] == 1 and tokens.shape[0] > 1:
            other = other.expand(tokens.shape[0], -1)
        _same_length(other.shape, tokens.shape)
        return torch.where(mask.bool(), other, tokens), "corrupt prompt"
    raise ValueError(
        "baseline must be 'pad', 'zero', a token id, or a corrupt prompt (text, list of texts, token ids "
        f"[batch, pos]); got {_describe(baseline)}"
    )


def _repeated(model, token: int, tokens: Tensor, mask: Tensor) -> Tensor:
    if not 0 <= token < model.architecture.d_vocab:
        raise ValueError(f"baseline token {token} is not in [0, {model.architecture.d_vocab})")
    return torch.where(mask.bool(), torch.full_like(tokens, token), tokens)


def _same_length(baseline: torch.Size, tokens: torch.Size) -> None:
    if baseline[1] != tokens[1]:
        raise ValueError(
            f"the baseline has {baseline[1]} positions but the input has {tokens[1]}: a corrupt-prompt baseline "
            "must have the same length as the input (integrated gradients interpolates position by position)"
        )
    if baseline[0] != tokens[0]:
        raise ValueError(f"the baseline has {baseline[0]} rows but the input has {tokens[0]} examples")


def warn_zero_baseline(model, site: str) -> None:
    """Warn when a zero baseline meets RMSNorm on the residual stream."""
    residual = site == "hook_embed" or "hook_resid" in site
    if model.architecture.norm == "rmsnorm" and residual:
        warnings.warn(
            "zero baseline on an RMSNorm model: RMSNorm is scale-invariant, so every point a * x of the path "
            "with a > 0 looks like x to the first norm and the whole change of the output happens at a ~ 0, "
            "between the integration points; expect a large completeness gap. Use a token baseline "
            "(baseline='pad' or a token id) or a corrupt prompt.",
            ZeroBaselineWarning,
            stacklevel=3,
        )


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:120]
