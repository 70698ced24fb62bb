"""Offline prompt-pair tasks in the spirit of MIB's circuit track (Mueller et al. 2025):
arithmetic, multiple choice and greater-than, beside IOI and induction, all behind one
signature ``task(model, n, *, seed=0) -> PromptPairs`` in ``TASKS``.

- ``arithmetic_pairs``: ``"3+5="`` -> ``"8"``; the corrupt prompt changes the second operand
  (``"3+2="``, answer ``"5"``). Addition and subtraction; every operand and answer is a
  number whose text is one token for the model (SmolLM2 and other digit-splitting tokenizers:
  0..9; GPT-2: up to a few hundred).
- ``multiple_choice_pairs``: ``"Question: Which of these is a fruit?\\nA. dog\\nB. apple\\n...
  Answer:"`` -> ``" B"``; the corrupt prompt lists the same options in another order, so
  its answer is another letter.
- ``greater_than_pairs``: Hanna et al. (2023), "How does GPT-2 compute greater-than?":
  ``"The war lasted from the year 1732 to the year 17"``, scored by ``GreaterThan``: the
  probability of years after 32 minus that of years up to 32. The corrupt start year ends in
  ``01``. Tokenizers with one token per two-digit number (GPT-2) read the two-digit year;
  tokenizers that split digits (SmolLM2, Qwen, Gemma) get the decade in the prompt
  (``"... from the year 1732 to the year 173"``) and are scored on the last digit (> 2),
  corrupt ``"... 1730 to the year 173"``.
- ``induction_pairs`` (``mechinterp.data.induction``) and ``ioi_pairs`` (``mechinterp.data.ioi``).

Every generator checks that its answers are single tokens and that clean and corrupt prompts
tokenize to the same length, and raises a ``ValueError`` naming what the tokenizer could not
form.

Example:
    >>> from mechinterp.data import TASKS
    >>> pairs = TASKS["greater-than"](model, 8, seed=0)
    >>> metric = pairs.metric()            # GreaterThan: p(later year) - p(earlier or same)
    >>> pairs = TASKS["arithmetic"](model, 8)
    >>> model.to_string(pairs.clean[0]), model.to_string(pairs.correct[:1])
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from mechinterp.data.induction import induction_pairs
from mechinterp.data.ioi import ioi_pairs
from mechinterp.data.pairs import PromptPairs
from mechinterp.data.records import pairs_from_records
from mechinterp.metrics import GreaterThan


def _name(model) -> str:
    return repr(model.architecture.model_name)


def _is_single(model, text: str) -> bool:
    try:
        model.to_single_token(text)
    except ValueError:
        return False
    return True


def _same_length(model, clean: str, corrupt: str) -> bool:
    return len(model.to_tokens(clean)[0]) == len(model.to_tokens(corrupt)[0])


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")


# ---------------------------------------------------------------------------------- arithmetic

OPERATIONS: dict[str, Callable[[int, int], int]] = {"+": lambda a, b: a + b, "-": lambda a, b: a - b}


def single_token_numbers(model, max_value: int) -> list[int]:
    """``0, 1, ..., k``: the longest run of numbers from 0 (at most ``max_value``) whose text
    is one token for the model."""
    numbers = []
    for value in range(max_value + 1):
        if not _is_single(model, str(value)):
            break
        numbers.append(value)
    return numbers


def arithmetic_pairs(
    model,
    n: int,
    *,
    seed: int = 0,
    operations: Sequence[str] = ("+", "-"),
    max_value: int = 99,
    shots: int = 3,
) -> PromptPairs:
    """``n`` two-operand arithmetic pairs ``"{a}{op}{b}="`` (see the module docstring).

    The corrupt prompt replaces ``b`` by another number ``b'`` that changes the answer;
    ``correct`` is ``a op b`` and ``incorrect`` is ``a op b'``. Operands and answers lie in
    ``0..k``, the longest run of single-token numbers up to ``max_value``; subtraction keeps
    ``a >= b``. Every prompt starts with the same ``shots`` solved examples, one per line
    (``"1+2=3\n"``): small models answer far more reliably with them.

    Raises:
        ValueError: an unknown operation, or a tokenizer without single-token numbers 0..2.

    Example:
        >>> pairs = arithmetic_pairs(model, 8, operations=("+",))
    """
    _check_n(n)
    unknown = sorted(set(operations) - set(OPERATIONS))
    if unknown or not operations:
        raise ValueError(
            f"operations must be a non-empty subset of {sorted(OPERATIONS)}, got {list(operations)}"
        )
    numbers = single_token_numbers(model, max_value)
    if len(numbers) < 3:
        raise ValueError(
            f"the tokenizer of {_name(model)} has single-token numbers only for {numbers}; arithmetic "
            "needs at least 0, 1 and 2 as one token each"
        )
    top = numbers[-1]
    rng = random.Random(seed)

    def problem() -> tuple[int, str, int, list[int]]:
        op = rng.choice(list(operations))
        if op == "+":
            answer = rng.randint(1, top)
            a = rng.randint(0, answer)
            b = answer - a
            others = [c for c in range(0, top - a + 1) if c != b]
        else:
            a = rng.randint(1, top)
            b = rng.randint(0, a)
            others = [c for c in range(0, a + 1) if c != b]
        return a, op, b, others

    prefix = ""
    for _ in range(shots):
        a, op, b, _ = problem()
        prefix += f"{a}{op}{b}={OPERATIONS[op](a, b)}\n"
    records = []
    while len(records) < n:
        a, op, b, others = problem()
        if not others:
            continue
        b_other = rng.choice(others)
        clean, corrupt = f"{prefix}{a}{op}{b}=", f"{prefix}{a}{op}{b_other}="
        if not _same_length(model, clean, corrupt):
            continue
        records.append(
            {
                "clean": clean,
                "corrupt": corrupt,
                "correct": str(OPERATIONS[op](a, b)),
                "incorrect": str(OPERATIONS[op](a, b_other)),
            }
        )
    return pairs_from_records(model, records, source="arithmetic_pairs")


# ----------------------------------------------------------------------------- multiple choice

CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "banana", "orange", "grape", "lemon", "cherry", "peach", "mango"),
    "animal": ("dog", "cat", "horse", "lion", "tiger", "mouse", "rabbit", "sheep"),
    "color": ("red", "blue", "green", "yellow", "purple", "black", "white", "brown"),
    "country": ("France", "Germany", "Spain", "Italy", "Japan", "China", "Brazil", "Canada"),
    "vehicle": ("car", "bus", "truck", "train", "bicycle", "plane", "boat", "ship"),
    "tool": ("hammer", "saw", "drill", "wrench", "shovel", "knife", "axe", "rake"),
}
LETTERS = "ABCD"


def multiple_choice_pairs(model, n: int, *, seed: int = 0, n_options: int = 4, shots: int = 2) -> PromptPairs:
    """``n`` multiple-choice pairs (see the module docstring): a question "Which of these is a
    {category}?", ``n_options`` lettered options of which exactly one belongs to the category,
    and ``"Answer:"``. ``correct`` is the clean answer letter, ``incorrect`` the letter of the
    same option in the corrupt prompt, whose options are shuffled so that the two differ.

    Letters are answered as ``" A"`` when the tokenizer has those as single tokens, else as
    ``"A"`` after ``"Answer: "``. Every prompt starts with the same ``shots`` answered
    questions.

    Raises:
        ValueError: ``n_options`` outside 2..4, or letters the tokenizer cannot give as one token.

    Example:
        >>> pairs = multiple_choice_pairs(model, 8, seed=1)
    """
    _check_n(n)
    if not 2 <= n_options <= len(LETTERS):
        raise ValueError(f"n_options must be in 2..{len(LETTERS)}, got {n_options}")
    letters = LETTERS[:n_options]
    if all(_is_single(model, f" {letter}") for letter in letters):
        answer_format, suffix = " {}", "Answer:"
    elif all(_is_single(model, letter) for letter in letters):
        answer_format, suffix = "{}", "Answer: "
    else:
        raise ValueError(
            f"the tokenizer of {_name(model)} has neither ' A'..' {letters[-1]}' nor 'A'..'{letters[-1]}' "
            "as single tokens; multiple choice answers with one letter token"
        )
    rng = random.Random(seed)
    categories = sorted(CATEGORIES)

    def prompt(category: str, options: list[str]) -> str:
        lines = "".join(f"\n{letter}. {option}" for letter, option in zip(letters, options, strict=True))
        return f"Question: Which of these is a {category}?{lines}\n{suffix}"

    def question() -> tuple[str, list[str], list[int]]:
        category = rng.choice(categories)
        others = rng.sample([c for c in categories if c != category], n_options - 1)
        options = [rng.choice(CATEGORIES[category])] + [rng.choice(CATEGORIES[c]) for c in others]
        return category, options, rng.sample(range(n_options), n_options)

    prefix = ""
    for _ in range(shots):
        category, options, order = question()
        prefix += (
            prompt(category, [options[i] for i in order])
            + answer_format.format(letters[order.index(0)])
            + "\n\n"
        )
    records, attempts = [], 0
    while len(records) < n:
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(
                f"could not form {n} multiple-choice pairs of equal token length for {_name(model)}"
            )
        category, options, clean_order = question()
        right = clean_order.index(0)
        corrupt_order = clean_order[:]
        wrong = rng.choice([i for i in range(n_options) if i != right])
        corrupt_order[right], corrupt_order[wrong] = corrupt_order[wrong], corrupt_order[right]
        clean = prefix + prompt(category, [options[i] for i in clean_order])
        corrupt = prefix + prompt(category, [options[i] for i in corrupt_order])
        if not _same_length(model, clean, corrupt):
            continue
        records.append(
            {
                "clean": clean,
                "corrupt": corrupt,
                "correct": answer_format.format(letters[right]),
                "incorrect": answer_format.format(letters[wrong]),
            }
        )
    return pairs_from_records(model, records, source="multiple_choice_pairs")


# -------------------------------------------------------------------------------- greater-than

NOUNS: tuple[str, ...] = (
    "war", "dynasty", "drought", "expedition", "strike", "reign", "famine", "project",
    "occupation", "crisis", "campaign", "festival", "rebellion", "siege", "voyage", "trial",
)  # fmt: skip
CENTURIES: tuple[int, ...] = (11, 12, 13, 14, 15, 16, 17, 18, 19)


@dataclass(frozen=True, eq=False, kw_only=True)
class GreaterThanPairs(PromptPairs):
    """Greater-than prompt pairs: ``PromptPairs`` plus ``value_tokens`` ``[answer]`` (the token
    of each value 0, 1, ... the answer can take) and ``thresholds`` ``[batch]`` (each clean
    example's start value); ``metric()`` is ``GreaterThan``. ``correct`` / ``incorrect`` hold
    the smallest valid answer and the threshold value itself."""

    value_tokens: Int[Tensor, " answer"]
    thresholds: Int[Tensor, " batch"]

    def metric(self) -> GreaterThan:  # type: ignore[override]
        """``p(value > threshold) - p(value <= threshold)`` at each answer position."""
        return GreaterThan(self.positions, self.value_tokens, self.thresholds)

    def select(self, count: int) -> GreaterThanPairs:
        base = super().select(count)
        fields = {
            name: getattr(base, name) for name in ("clean", "corrupt", "correct", "incorrect", "positions")
        }
        return GreaterThanPairs(
            **fields,
            attention_mask=base.attention_mask,
            value_tokens=self.value_tokens,
            thresholds=self.thresholds[:count],
        )


def greater_than_pairs(model, n: int, *, seed: int = 0) -> GreaterThanPairs:
    """``n`` greater-than pairs (see the module docstring), scored by ``pairs.metric()``.

    Two-digit mode (every ``"00".."99"`` one token): start year ``{C}{YY}`` with ``YY`` in
    02..98, prompt ending ``"to the year {C}"``, values ``00..99``, corrupt ``YY = 01``.
    Digit mode (``"0".."9"`` one token each, two-digit numbers not): start year ``{C}{D}{y}``
    with ``y`` in 1..8, prompt ending ``"to the year {C}{D}"``, values ``0..9``, corrupt
    ``y = 0``.

    Raises:
        ValueError: a tokenizer that has neither two-digit nor one-digit number tokens.

    Example:
        >>> pairs = greater_than_pairs(model, 8)
        >>> pairs.metric()(model(pairs.clean))       # > 0 for a model that does greater-than
    """
    _check_n(n)
    if all(_is_single(model, f"{v:02d}") for v in range(100)):
        values = [f"{v:02d}" for v in range(100)]
        two_digit = True
    elif all(_is_single(model, str(v)) for v in range(10)):
        values = [str(v) for v in range(10)]
        two_digit = False
    else:
        raise ValueError(
            f"the tokenizer of {_name(model)} has neither '00'..'99' nor '0'..'9' as single tokens; "
            "greater-than reads the year (or its last digit) as one token"
        )
    rng = random.Random(seed)
    records, thresholds, attempts = [], [], 0
    while len(records) < n:
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(
                f"could not form {n} greater-than pairs of equal token length for {_name(model)}"
            )
        noun, century = rng.choice(NOUNS), rng.choice(CENTURIES)
        if two_digit:
            value, stem = rng.randint(2, 98), f"{century}"
            clean_year, corrupt_year = f"{stem}{value:02d}", f"{stem}01"
        else:
            value, stem = rng.randint(1, 8), f"{century}{rng.randint(0, 9)}"
            clean_year, corrupt_year = f"{stem}{value}", f"{stem}0"
        template = "The {} lasted from the year {} to the year {}"
        clean, corrupt = template.format(noun, clean_year, stem), template.format(noun, corrupt_year, stem)
        if not _same_length(model, clean, corrupt):
            continue
        records.append(
            {"clean": clean, "corrupt": corrupt, "correct": values[value + 1], "incorrect": values[value]}
        )
        thresholds.append(value)
    pairs = pairs_from_records(model, records, source="greater_than_pairs")
    return GreaterThanPairs(
        clean=pairs.clean,
        corrupt=pairs.corrupt,
        correct=pairs.correct,
        incorrect=pairs.incorrect,
        positions=pairs.positions,
        attention_mask=pairs.attention_mask,
        value_tokens=torch.tensor([model.to_single_token(v) for v in values]),
        thresholds=torch.tensor(thresholds),
    )


Task = Callable[..., PromptPairs]
TASKS: dict[str, Task] = {
    "ioi": ioi_pairs,
    "arithmetic": arithmetic_pairs,
    "multiple-choice": multiple_choice_pairs,
    "greater-than": greater_than_pairs,
    "induction": induction_pairs,
}
"""Every offline task: ``TASKS[name](model, n, *, seed=0) -> PromptPairs`` (``pairs.metric()``
gives the task's metric)."""
