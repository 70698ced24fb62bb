"""Planted units: directions whose trigger is known by construction, to check scorers.

``token_class_unit`` fits a ridge regression from the token embedding (``hook_embed``, which
is exactly ``W_E[token]``) to membership of a token class (digits, capitalised words,
closing brackets, ...). The resulting direction fires on the class's tokens wherever they
occur, so a correct explanation of it is known in advance, and a scorer that cannot tell it
from another unit's explanation is not measuring anything.

Example:
    >>> digits = token_class_unit(model, "digits", lambda s: s.strip().isdigit())
    >>> token_class_precision(model, digits, digits_predicate)    # fraction of class tokens
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from mechinterp.explain.units import Unit

TokenPredicate = Callable[[str], bool]

TOKEN_CLASSES: dict[str, TokenPredicate] = {
    "digits and numbers": lambda s: bool(re.fullmatch(r"\s*\d+", s)),
    "capitalised words and names": lambda s: bool(re.fullmatch(r" ?[A-Z][a-z]+", s)),
    "closing brackets and parentheses": lambda s: any(c in s for c in ")]}") and not re.search(r"\w", s),
}
"""Token classes with an unambiguous one-phrase description (the key), for planted units."""


def token_class_members(model, predicate: TokenPredicate) -> torch.Tensor:
    """Boolean ``[d_vocab]``: which tokens (decoded alone) satisfy ``predicate``."""
    tokenizer = model._require_tokenizer()
    n_tokens = min(model.architecture.d_vocab, len(tokenizer))
    members = torch.zeros(model.architecture.d_vocab, dtype=torch.bool)
    for token in range(n_tokens):
        members[token] = bool(predicate(tokenizer.decode([token])))
    if not members.any():
        raise ValueError("no token of the vocabulary satisfies the predicate")
    return members


def token_class_unit(
    model, label: str, predicate: TokenPredicate, *, ridge: float = 1e-3, member_weight: float = 0.5
) -> Unit:
    """A ``direction`` unit at ``hook_embed`` fitted to fire on tokens satisfying ``predicate``:
    a regression to 1 on members and 0 elsewhere, shifted by -0.5 so that its sign is the
    fitted decision (about +0.5 on members, -0.5 elsewhere).

    Args:
        label: the unit's name (and the explanation a perfect explainer would give).
        ridge: the ridge penalty, relative to the mean squared embedding norm.
        member_weight: the share of the fit's weight on class members (recall vs precision).
    """
    try:
        members = token_class_members(model, predicate)
    except ValueError as error:
        raise ValueError(f"planted unit {label!r}: {error}") from None
    with torch.no_grad():
        x = model.W_E.detach().double().cpu()
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        y = members.double()
        # members are rare: they get member_weight of the total weight so the fit cannot ignore them
        weights = torch.where(members, member_weight / members.sum(), (1 - member_weight) / (~members).sum())
        gram = x.T @ (weights[:, None] * x)
        penalty = ridge * torch.diagonal(gram).mean() * torch.eye(x.shape[1], dtype=x.dtype)
        solution = torch.linalg.solve(gram + penalty, x.T @ (weights * y))
    direction = solution[:-1].to(model.W_E.dtype)
    return Unit.from_direction("hook_embed", direction, bias=float(solution[-1]) - 0.5, label=label)


def token_class_precision(
    model, unit: Unit, predicate: TokenPredicate, threshold: float = 0.0
) -> tuple[float, float]:
    """Over the vocabulary: (precision, recall) of ``unit`` above ``threshold`` for the class."""
    members = token_class_members(model, predicate)
    with torch.no_grad():
        fires = (model.W_E.detach().cpu() @ unit.direction.cpu() + unit.bias) > threshold
    hits = (fires & members).sum().item()
    return hits / max(fires.sum().item(), 1), hits / members.sum().item()
