"""Attention-head detection: previous-token, duplicate-token and induction scores.

A head's score for a pattern is the fraction of its attention that falls on the pattern's
query-key pairs: ``sum(pattern * detection) / sum(pattern)`` (TransformerLens'
``head_detector`` "mul" measure, computed here for every head and example at once and
averaged over examples). Induction heads are found with the standard test (Olsson et al.
2022): a sequence of random tokens repeated once; an induction head at the second copy
attends to the token after the previous occurrence of the current token.

Example:
    >>> scores = induction_scores(model)            # [layer, head]
    >>> scores.flatten().topk(3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechinterp.dims import Tokens
from mechinterp.models.tokenization import token_labels

HeadKind = Literal["previous_token", "duplicate_token", "induction"]


def detection_pattern(tokens: Tokens, kind: HeadKind) -> Float[Tensor, "batch q_pos k_pos"]:
    """``[batch, q_pos, k_pos]`` 0/1 pattern of where a head of ``kind`` should attend."""
    n_pos = tokens.shape[-1]
    if kind == "previous_token":
        pattern = torch.zeros(n_pos, n_pos, device=tokens.device)
        pattern[1:, :-1] = torch.eye(n_pos - 1, device=tokens.device)
        return pattern.expand(tokens.shape[0], -1, -1)
    same = (tokens[:, :, None] == tokens[:, None, :]).float().tril(-1)  # earlier occurrences
    if kind == "duplicate_token":
        return same
    if kind == "induction":  # the token after an earlier occurrence
        shifted = torch.zeros_like(same)
        shifted[:, :, 1:] = same[:, :, :-1]
        return shifted.tril()
    raise ValueError(f"unknown head kind {kind!r}; choose previous_token, duplicate_token or induction")


@torch.no_grad()
def head_scores(
    model,
    tokens: Tokens,
    kind: HeadKind,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> Float[Tensor, "layer head"]:
    """``[layer, head]`` scores of every head for ``kind`` on ``tokens`` ``[batch, pos]``."""
    tokens = tokens.to(model.device)
    target = detection_pattern(tokens, kind)[:, None]  # [batch, 1, q, k]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    scores = []
    for layer in range(model.architecture.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].clone()  # [batch, head, q, k]
        if exclude_bos:
            pattern[..., 0] = 0
        if exclude_current_token:
            pattern.diagonal(dim1=-2, dim2=-1).zero_()
        per_example = (pattern * target).sum((-1, -2)) / pattern.sum((-1, -2))
        scores.append(per_example.mean(0))
    return torch.stack(scores).cpu()


def repeated_random_tokens(model, *, seq_len: int = 50, batch: int = 8, seed: int = 0) -> Tokens:
    """``[batch, 1 + 2 * seq_len]``: BOS, then ``seq_len`` random tokens, then the same again."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.architecture.d_vocab
    low = min(100, vocab // 2)  # skip the first ids, where tokenizers keep special tokens
    half = torch.randint(low, vocab, (batch, seq_len), generator=generator)
    bos_id = (
        model.tokenizer.bos_token_id
        if model.tokenizer is not None and model.tokenizer.bos_token_id is not None
        else 0
    )
    bos = torch.full((batch, 1), bos_id)
    return torch.cat([bos, half, half], dim=1)


def induction_scores(
    model, *, seq_len: int = 50, batch: int = 8, seed: int = 0
) -> Float[Tensor, "layer head"]:
    """``[layer, head]`` induction scores on repeated random tokens, measured on the second copy
    only (where an induction head has something to copy)."""
    tokens = repeated_random_tokens(model, seq_len=seq_len, batch=batch, seed=seed)
    target = detection_pattern(tokens, "induction")
    target[:, : seq_len + 1] = 0  # first copy: nothing to induce from
    _, cache = model.run_with_cache(
        tokens.to(model.device), names_filter=lambda name: name.endswith("hook_pattern")
    )
    scores = []
    for layer in range(model.architecture.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, seq_len + 1 :].cpu()
        scores.append((pattern * target[:, None, seq_len + 1 :]).sum(-1).mean((0, 2)))
    return torch.stack(scores)


@dataclass(frozen=True, eq=False)
class AttentionPatterns:
    """Attention patterns ``[head, q_pos, k_pos]`` of chosen ``(layer, head)`` pairs on one prompt."""

    patterns: Float[Tensor, "_head q_pos k_pos"]  # one per (layer, head) pair
    heads: list[tuple[int, int]]
    str_tokens: list[str]


@torch.no_grad()
def attention_patterns(
    model, text: str | Int[Tensor, "*batch pos"], heads: list[tuple[int, int]]
) -> AttentionPatterns:
    """The attention patterns of ``heads`` (``(layer, head)`` pairs) on one prompt; draw them
    with ``mechinterp.plotting.attention_heatmap``."""
    tokens = model.to_tokens(text) if isinstance(text, str) else text.reshape(1, -1).to(model.device)
    names = {f"blocks.{layer}.attn.hook_pattern" for layer, _ in heads}
    for layer, head in heads:
        if not (0 <= layer < model.architecture.n_layers and 0 <= head < model.architecture.n_heads):
            raise ValueError(
                f"head ({layer}, {head}) does not exist in a {model.architecture.n_layers}-layer, "
                f"{model.architecture.n_heads}-head model"
            )
    _, cache = model.run_with_cache(tokens, names_filter=list(names))
    patterns = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0, head] for layer, head in heads])
    # models without a tokenizer (token-id toys) label positions by token id
    labels = token_labels(model.tokenizer, tokens[0].tolist())
    return AttentionPatterns(patterns.cpu(), list(heads), labels)
