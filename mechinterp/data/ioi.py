"""Indirect-object identification (IOI) prompt pairs, generated offline from templates.

Wang et al. (2022), "Interpretability in the Wild: a Circuit for Indirect Object
Identification in GPT-2 small", study sentences such as "When Mary and John went to the
store, John gave a drink to" whose continuation is the indirect object (IO, " Mary") rather
than the repeated subject (S, " John"). Each clean prompt here is one of those sentences,
with the two names in either order (ABBA and BABA).

Corruption: the second mention of the subject is replaced by the indirect object ("...,
Mary gave a drink to"), so the corrupt run's natural answer is the subject. This is the
S2-swap variant; Wang et al.'s ABC distribution (three distinct names) has no definite
answer, whereas here both runs have one and ``logit(IO) - logit(S)`` flips sign between
them, which is what ``PromptPairs.metric()`` measures.

Lengths: every filler (names, places, objects) must be one token for the model's tokenizer
(checked; fillers that are not are dropped), and the built-in templates share one shape, so
all prompts have the same length and the names sit at the same positions (in SmolLM2: 15
tokens with BOS, names at positions 2, 4 and 10). That keeps per-position patching maps
meaningful across examples. Custom templates of other lengths are right-padded and get an
``attention_mask``; clean and corrupt always have equal length pair by pair.

Spans (``pairs.spans``, for position-aware circuits): Wang et al.'s labels, found in the
tokens: ``io`` (the indirect object's mention), ``s1`` and ``s2`` (the subject's first and
second mention), ``end`` (the position the answer is read at) and ``other``. Custom
templates that mention a name other than once (IO) or twice (S) get ``spans=None``.

Example:
    >>> pairs = ioi_pairs(model, 8, seed=0)
    >>> model.to_string(pairs.clean[0])
    '<|im_start|>When Mary and John went to the store, John gave a drink to'
    >>> metric = pairs.metric()       # logit(IO) - logit(S) at the last token
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch

from mechinterp.data.pairs import PositionSpans, PromptPairs
from mechinterp.data.records import pairs_from_records

# {first} and {second} are the two names in order; {s2} is the repeated subject (clean) or
# the indirect object (corrupt).
TEMPLATES: tuple[str, ...] = (
    "When {first} and {second} went to the {place}, {s2} gave a {object} to",
    "After {first} and {second} arrived at the {place}, {s2} handed a {object} to",
    "While {first} and {second} were at the {place}, {s2} passed a {object} to",
    "Then {first} and {second} walked to the {place}, {s2} threw a {object} to",
    "Once {first} and {second} got to the {place}, {s2} sent a {object} to",
)
NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Anna", "Sarah", "Michael", "David", "Lisa", "Paul",
    "Emma", "Alice", "Bob", "Kate", "Peter", "Mark", "Laura", "Jack", "Sam", "Ben",
)  # fmt: skip
PLACES: tuple[str, ...] = ("store", "park", "school", "market", "beach", "office", "garden", "station")
OBJECTS: tuple[str, ...] = ("drink", "book", "ball", "gift", "letter", "bag", "ring", "cake")


def single_token_words(model, words: Sequence[str]) -> list[str]:
    """The words that are one token for ``model`` when preceded by a space."""
    kept = []
    for word in words:
        try:
            model.to_single_token(f" {word}")
        except ValueError:
            continue
        kept.append(word)
    return kept


def ioi_pairs(
    model,
    n: int,
    *,
    seed: int = 0,
    templates: Sequence[str] = TEMPLATES,
    names: Sequence[str] = NAMES,
) -> PromptPairs:
    """``n`` IOI prompt pairs (see the module docstring): answer ``correct`` = the indirect
    object, ``incorrect`` = the subject, read at the last token.

    Args:
        n: number of pairs (at least 1).
        seed: seeds the choice of template, names, place, object and name order.
        templates: format strings with ``{first}``, ``{second}``, ``{place}``, ``{s2}`` and
            ``{object}`` fields, ending just before the answer.
        names: candidate names; those that are not one token for the model are dropped.

    Raises:
        ValueError: fewer than two single-token names, or a template whose clean and
            corrupt prompts tokenize to different lengths.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    usable = single_token_words(model, names)
    places, objects = single_token_words(model, PLACES), single_token_words(model, OBJECTS)
    if len(usable) < 2 or not places or not objects:
        raise ValueError(
            f"the tokenizer of {model.architecture.model_name!r} keeps {len(usable)} names, {len(places)} places "
            f"and {len(objects)} objects as single tokens; IOI needs at least 2 names, 1 place and 1 object"
        )
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        template = rng.choice(list(templates))
        io, subject = rng.sample(usable, 2)
        first, second = (io, subject) if rng.random() < 0.5 else (subject, io)
        fill = {"first": first, "second": second, "place": rng.choice(places), "object": rng.choice(objects)}
        records.append(
            {
                "clean": template.format(s2=subject, **fill),
                "corrupt": template.format(s2=io, **fill),
                "correct": f" {io}",
                "incorrect": f" {subject}",
            }
        )
    pairs = pairs_from_records(model, records, source="ioi_pairs")
    try:
        return dataclasses.replace(pairs, spans=ioi_spans(pairs))
    except ValueError:  # a custom template mentions a name more often: no spans (documented)
        return pairs


def ioi_spans(pairs: PromptPairs) -> PositionSpans:
    """``io``, ``s1``, ``s2`` and ``end`` positions of IOI pairs (``other`` elsewhere), found
    in the clean tokens: the indirect object is the correct answer's token, the subject's
    two mentions are the incorrect answer's, the end is where the answer is read."""
    named: dict[str, list[int]] = {"io": [], "s1": [], "s2": [], "end": pairs.positions.tolist()}
    for row, (tokens, io, subject) in enumerate(
        zip(pairs.clean, pairs.correct, pairs.incorrect, strict=True)
    ):
        io_at = (tokens == io).nonzero().flatten().tolist()
        s_at = (tokens == subject).nonzero().flatten().tolist()
        if len(io_at) != 1 or len(s_at) != 2:
            raise ValueError(
                f"IOI pair {row} has {len(io_at)} mention(s) of the indirect object and {len(s_at)} of the "
                "subject as single tokens; spans need exactly 1 and 2"
            )
        named["io"].append(io_at[0])
        named["s1"].append(s_at[0])
        named["s2"].append(s_at[1])
    spans = PositionSpans.from_positions(pairs.clean.shape[1], {k: torch.tensor(v) for k, v in named.items()})
    return spans
