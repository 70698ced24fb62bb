"""Prompt-pair datasets for patching and circuit discovery: the ``PromptPairs`` type, the IOI
and induction generators, and JSON / JSONL record files.

Example:
    >>> from mechinterp.data import ioi_pairs, load_pairs
    >>> pairs = ioi_pairs(model, 8)                  # built-in generators
    >>> pairs = induction_pairs(model, 16)           # repeated random tokens
    >>> pairs = load_pairs("pairs.jsonl", model)     # {"clean", "corrupt", "correct", "incorrect"} records
"""

from mechinterp.data.corpus import load_corpus
from mechinterp.data.induction import induction_pairs
from mechinterp.data.ioi import ioi_pairs
from mechinterp.data.pairs import PositionSpans, PromptPairs
from mechinterp.data.records import load_pairs, pairs_from_records, read_records, write_records

__all__ = [
    "PositionSpans",
    "PromptPairs",
    "induction_pairs",
    "ioi_pairs",
    "load_corpus",
    "load_pairs",
    "pairs_from_records",
    "read_records",
    "write_records",
]
