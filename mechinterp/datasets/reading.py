"""Reading corpora through a model and a dictionary, one batch of token windows at a time.

Texts are cut into windows of ``context_len`` tokens (the model's BOS in front when its
tokenizer has one; BOS is never counted), run in batches up to the block that holds the
dictionary's hook (``stop_at_layer``), encoded, and handed to an accumulator. Each text
falls in the discovery or the held-out split by a seeded draw made in reading order, so the
same texts land in the same split on every pass (``held_out`` returns them).

Example:
    >>> for acts, mask, windows in encoded_windows(model, sae, texts, context_len=64):
    ...     counts.update(acts, mask)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechinterp.explain.units import encode_latents
from mechinterp.sae.activations import stop_layer


def check_dictionary(model, dictionary) -> None:
    """A dictionary is any object with ``encode(x) -> [..., d_sae]`` and ``hook_name``."""
    for attribute in ("encode", "hook_name"):
        if not hasattr(dictionary, attribute):
            raise TypeError(
                f"a dictionary needs encode(x) and hook_name (an SAE); {type(dictionary).__name__} has no "
                f"{attribute!r}"
            )
    model.check_hook_name(dictionary.hook_name)


def check_texts(texts, name: str) -> None:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be an iterable of strings, not one string; wrap it in a list")


def splits(texts: Iterable[str], holdout: float, seed: int) -> Iterator[tuple[str, bool]]:
    """``(text, held_out)`` for each text: a seeded draw per text, in order."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must lie in [0, 1), got {holdout}")
    rng = np.random.default_rng(seed)
    for text in texts:
        yield text, bool(rng.random() < holdout)


def held_out(texts: Iterable[str], holdout: float = 0.5, seed: int = 0) -> list[str]:
    """The texts ``diff_corpora`` (same ``holdout`` and ``seed``) keeps for replication, e.g.
    to check a hypothesis on texts the ranking never saw.

    Example:
        >>> check_hypothesis(["mentions a year"], held_out(texts_a), held_out(texts_b), scorer)
    """
    check_texts(texts, "texts")
    return [text for text, out in splits(texts, holdout, seed) if out]


def windows(model, tagged: Iterable[tuple[str, bool]], context_len: int) -> Iterator[tuple[list[int], bool]]:
    """``(window, tag)``: token windows of at most ``context_len`` tokens (BOS first when the
    tokenizer has one) of each ``(text, tag)``, with the text's tag."""
    if context_len < 2:
        raise ValueError(f"context_len must be at least 2, got {context_len}")
    tokenizer = model._require_tokenizer()
    bos = tokenizer.bos_token_id
    head = [] if bos is None else [bos]
    body = context_len - len(head)
    for text, tag in tagged:
        if not isinstance(text, str):
            raise TypeError(f"corpora hold strings; got {type(text).__name__}")
        ids = tokenizer.encode(text, add_special_tokens=False)
        for start in range(0, len(ids), body):
            piece = ids[start : start + body]
            if piece:
                yield [*head, *piece], tag


def pad(model, batch: Sequence[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """``(tokens, counted, attention_mask)``: right-padded ids, a mask of the tokens that
    count (BOS and padding excluded) and the attention mask (padding excluded)."""
    width = max(len(w) for w in batch)
    tokens = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, w in enumerate(batch):
        tokens[i, : len(w)] = torch.tensor(w)
        mask[i, : len(w)] = 1
    counted = mask.bool()
    bos = model._require_tokenizer().bos_token_id
    if bos is not None:
        counted[:, 0] = False
    return tokens.to(model.device), counted.to(model.device), mask.to(model.device)


@torch.no_grad()
def hook_activations(model, hook_name: str, tokens: Tensor, mask: Tensor) -> Tensor:
    """The activation at ``hook_name`` ``[batch, pos, ...]``, running only the blocks it needs."""
    stop = stop_layer(model, hook_name)
    kwargs = {} if stop is None else {"stop_at_layer": stop}
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=[hook_name], **kwargs)
    return cache[hook_name]


def batches(
    model, tagged: Iterable[tuple[str, bool]], context_len: int, batch_size: int
) -> Iterator[tuple[list[list[int]], list[bool]]]:
    batch, tags = [], []
    for window, tag in windows(model, tagged, context_len):
        batch.append(window)
        tags.append(tag)
        if len(batch) == batch_size:
            yield batch, tags
            batch, tags = [], []
    if batch:
        yield batch, tags


@torch.no_grad()
def encoded_windows(
    model,
    dictionary,
    tagged: Iterable[tuple[str, bool]],
    *,
    context_len: int = 64,
    batch_size: int = 16,
    progress: bool = False,
    description: str = "reading",
) -> Iterator[tuple[Tensor, Tensor, list[list[int]], Tensor]]:
    """``(acts [batch, pos, d_sae], counted [batch, pos], windows, tags [batch])`` per batch
    of windows of the ``(text, tag)`` pairs ``tagged``."""
    check_dictionary(model, dictionary)
    for batch, tags in tqdm(
        batches(model, tagged, context_len, batch_size), desc=description, unit="batch", disable=not progress
    ):
        tokens, counted, mask = pad(model, batch)
        value = hook_activations(model, dictionary.hook_name, tokens, mask)
        yield encode_latents(dictionary, value), counted, batch, torch.tensor(tags, device=counted.device)
