"""The prompt a circuit was found on, as graph viewers show it.

Neuronpedia and circuit-tracer draw a graph over one prompt: its tokens along the x axis
and a logit node labelled with the predicted token and its probability. A circuit is
found on a batch of prompt pairs, so ``prompt_record`` describes the batch's first clean
prompt: its text and tokens (padding removed), the position the metric reads, the answer
token there and the clean run's probability of it. The discovery algorithms store it as
``circuit.metadata["prompt"]``; it survives our JSON, so a circuit file alone can be
exported to Neuronpedia later.

The answer is the example's correct token (``data.correct`` of ``PromptPairs``, or the
metric's ``correct`` as in ``LogitDifference``); for metrics without one (KL divergence),
the clean run's most likely token (``answer_source`` says which).

Example:
    >>> record = prompt_record(model, pairs, pairs.metric())
    >>> record["tokens"][-3:], record["answer"], record["answer_prob"]
    (['a', ' drink', ' to'], ' Mary', 0.62)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechinterp.models.tokenization import token_labels


def _correct_tokens(data, metric) -> Tensor | None:
    """Per-example correct answer ids from the data or the (possibly wrapped) metric."""
    holders = [data]
    while metric is not None:
        holders.append(metric)
        metric = getattr(metric, "metric", None)  # Normalized wraps another metric
    for holder in holders:
        correct = getattr(holder, "correct", None)
        if correct is not None:
            return torch.as_tensor(correct)
    return None


def _token_strings(model, ids: list[int]) -> list[str]:
    """Each token decoded on its own; a model without a tokenizer gets ``<id N>`` labels."""
    return token_labels(model.tokenizer, ids)


@torch.no_grad()
def prompt_record(model, data, metric) -> dict[str, Any]:
    """The first clean prompt of ``data`` (``PairedData`` or ``PromptPairs``) as a JSON-ready
    dict: ``text``, ``tokens`` (one string per token), ``token_ids``, ``position`` (the
    index in ``tokens`` that ``metric`` reads), ``answer`` / ``answer_id`` (the answer token
    there), ``answer_prob`` (its probability in the clean run, softmax over the vocabulary)
    and ``answer_source`` (``"correct answer"`` or ``"top prediction"``). One forward pass.

    Example:
        >>> prompt_record(model, pairs, pairs.metric())["answer"]
        ' Mary'
    """
    tokens = data.clean[0]
    mask = getattr(data, "attention_mask", None)
    keep = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask[0].bool().to(tokens.device)
    position = int(metric.positions[0])
    if not keep[position]:
        raise ValueError(f"the metric reads position {position} of the first prompt, which is padding")
    ids = tokens[keep].tolist()
    position -= int((~keep[:position]).sum())  # left padding shifts the position
    logits = model(torch.tensor([ids], device=model.device))[0, position].float()
    correct = _correct_tokens(data, metric)
    answer_id = int(correct[0]) if correct is not None else int(logits.argmax())
    text = (
        " ".join(_token_strings(model, ids))
        if model.tokenizer is None
        else model.tokenizer.decode(ids, skip_special_tokens=True)
    )
    return {
        "text": text,
        "tokens": _token_strings(model, ids),
        "token_ids": ids,
        "position": position,
        "answer": _token_strings(model, [answer_id])[0],
        "answer_id": answer_id,
        "answer_prob": float(logits.softmax(-1)[answer_id]),
        "answer_source": "correct answer" if correct is not None else "top prediction",
    }
