"""Induction prompt pairs: repeated random tokens, and the same with the first copy replaced.

An induction head (Olsson et al. 2022, "In-context Learning and Induction Heads") completes
``... A B ... A -> B``: having seen ``A`` followed by ``B``, at a later ``A`` it predicts
``B``. Each clean prompt is BOS, random noise, a random block, more noise, and the first
``k`` tokens of the block again; the answer at the last position is ``block[k]``. The noise
lengths (and ``k``) are drawn per prompt, so the distance back to the first copy varies and a
model that merely attends a fixed number of positions back cannot score well.

Corruption: the first copy of the block is replaced by different random tokens, keeping
every position, so the corrupt prompt gives no way to know ``block[k]``. ``incorrect`` is
the corrupt first copy's token at ``k``: it sits in the corrupt prompt exactly where the
answer sits in the clean one, so ``logit(correct) - logit(incorrect)`` flips sign between
the runs for a model that copies from the block, and a head that merely boosts every token
in its context favours neither answer. Within a prompt all tokens are distinct (noise,
block and the corrupt block), so every lookup has one unambiguous target.

Example:
    >>> pairs = induction_pairs(model, 16, seed=0)
    >>> pairs.clean.shape, pairs.positions[:3]
    (torch.Size([16, 40]), tensor([39, 39, 39]))
"""

from __future__ import annotations

import torch

from mechinterp.data.pairs import PromptPairs


def induction_pairs(model, n: int, *, seed: int = 0, n_pos: int = 40, block_len: int = 10) -> PromptPairs:
    """``n`` induction prompt pairs of ``n_pos`` tokens each (see the module docstring).

    Token ids are drawn from the model's vocabulary, leaving out its BOS token (the
    tokenizer's, or id 0 for a model without a tokenizer, as in ``toy-induction-2l``) and
    the tokenizer's other special tokens. Every prompt starts with BOS.

    Args:
        model: a ``HookedLM`` (only its vocabulary size and tokenizer are read).
        n: number of pairs (at least 1).
        seed: seeds every random choice.
        n_pos: prompt length; the answer is predicted at position ``n_pos - 1``.
        block_len: length ``L`` of the repeated block; the second copy keeps ``k`` of its
            tokens, ``k`` drawn from ``1 .. L-1`` per prompt.

    Raises:
        ValueError: a bad ``n`` / ``block_len``, or a vocabulary too small for distinct tokens.

    Example:
        >>> pairs = induction_pairs(model, 8, n_pos=30, block_len=6)
        >>> circuit = circuits.ALGORITHMS["eap"](model, pairs, pairs.metric(), graph)
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 2 <= block_len <= n_pos - 2:
        raise ValueError(f"block_len must be in 2..n_pos-2 = {n_pos - 2}, got {block_len}")
    tokenizer = model.tokenizer
    bos = tokenizer.bos_token_id if tokenizer is not None and tokenizer.bos_token_id is not None else 0
    excluded = {bos, *(tokenizer.all_special_ids if tokenizer is not None else ())}
    usable = torch.tensor([t for t in range(model.architecture.d_vocab) if t not in excluded])
    needed = n_pos - 2 + block_len  # most noise (k = 1) plus the block plus the corrupt block
    if len(usable) < needed:
        raise ValueError(
            f"n_pos={n_pos} with block_len={block_len} needs {needed} distinct token ids, "
            f"but the vocabulary has {len(usable)} usable ones; use shorter prompts"
        )
    generator = torch.Generator().manual_seed(seed)
    clean = torch.full((n, n_pos), bos)
    corrupt = torch.full((n, n_pos), bos)
    correct, incorrect = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    for row in range(n):
        k = int(torch.randint(1, block_len, (), generator=generator))
        n_noise = n_pos - 1 - block_len - k
        before = int(torch.randint(0, n_noise + 1, (), generator=generator))
        drawn = usable[torch.randperm(len(usable), generator=generator)[: n_noise + 2 * block_len]]
        noise, block, other = (
            drawn[:n_noise],
            drawn[n_noise : n_noise + block_len],
            drawn[n_noise + block_len :],
        )
        pieces = [noise[:before], block, noise[before:], block[:k]]
        clean[row, 1:] = torch.cat(pieces)
        corrupt[row, 1:] = torch.cat([pieces[0], other, *pieces[2:]])
        correct[row], incorrect[row] = block[k], other[k]
    return PromptPairs(
        clean=clean,
        corrupt=corrupt,
        correct=correct,
        incorrect=incorrect,
        positions=torch.full((n,), n_pos - 1),
    )
