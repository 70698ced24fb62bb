"""Prompt-pair datasets for patching and circuit discovery: the ``PromptPairs`` type, the IOI
and induction generators, and JSON / JSONL record files.

Example:
    >>> from mechinterp.data import ioi_pairs, load_pairs
    >>> pairs = ioi_pairs(model, 8)                  # built-in generators
    >>> pairs = induction_pairs(model, 16)           # repeated random tokens
    >>> pairs = TASKS["greater-than"](model, 8)     # also "arithmetic", "multiple-choice", "ioi", "induction"
    >>> pairs = load_pairs("pairs.jsonl", model)     # {"clean", "corrupt", "correct", "incorrect"} records
"""

from mechinterp.data.corpus import load_corpus
from mechinterp.data.induction import induction_pairs
from mechinterp.data.ioi import ioi_pairs
from mechinterp.data.pairs import PositionSpans, PromptPairs
from mechinterp.data.records import load_pairs, pairs_from_records, read_records, write_records
from mechinterp.data.tasks import (
    TASKS,
    GreaterThanPairs,
    arithmetic_pairs,
    greater_than_pairs,
    multiple_choice_pairs,
)

__all__ = [
    "TASKS",
    "GreaterThanPairs",
    "PositionSpans",
    "PromptPairs",
    "arithmetic_pairs",
    "greater_than_pairs",
    "induction_pairs",
    "ioi_pairs",
    "load_corpus",
    "load_pairs",
    "multiple_choice_pairs",
    "pairs_from_records",
    "read_records",
    "write_records",
]
