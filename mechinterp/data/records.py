"""Prompt pairs from a JSON or JSONL file of records.

Each record is ``{"clean": str, "corrupt": str, "correct": str, "incorrect": str}``:
the two prompts (equal token length) and the single-token answers of the clean and the
corrupt run. A ``.json`` file holds a list of records; a ``.jsonl`` file one record per
line. Prompts of different lengths across records are right-padded (``attention_mask``);
each example is read at its own last token.

Example file (``pairs.jsonl``)::

    {"clean": "The capital of France is", "corrupt": "The capital of Italy is", "correct": " Paris", "incorrect": " Rome"}

Example:
    >>> pairs = load_pairs("pairs.jsonl", model)
    >>> write_records(records, "pairs.jsonl")    # list of dicts -> JSONL
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mechinterp.data.pairs import PromptPairs
from mechinterp.metrics import last_positions

FIELDS = ("clean", "corrupt", "correct", "incorrect")


def read_records(path: str | Path) -> list[dict[str, str]]:
    """The records of a ``.json`` (a list) or ``.jsonl`` (one object per line) file, checked
    for their four string fields.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bad JSON, a missing / extra / non-string field, or no records; the
            message names the line (JSONL) or index (JSON) of the bad record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not valid JSON ({error.msg})") from error
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from error
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json pairs file holds a list of records, got {type(data).__name__}")
        records = [(f"record {i}", record) for i, record in enumerate(data)]
    else:
        raise ValueError(f"{path}: expected a .json or .jsonl file, got {path.suffix or 'no suffix'!r}")
    if not records:
        raise ValueError(f"{path} holds no records")
    for where, record in records:
        _check_record(path, where, record)
    return [record for _, record in records]


def _check_record(path: Path, where: str, record: object) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{path}: {where} must be an object with keys {list(FIELDS)}, got {record!r}")
    missing = [key for key in FIELDS if key not in record]
    extra = sorted(set(record) - set(FIELDS))
    if missing or extra:
        problems = ([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])
        raise ValueError(
            f"{path}: {where} has {' and '.join(problems)} keys; expected exactly {list(FIELDS)}"
        )
    for key in FIELDS:
        if not isinstance(record[key], str) or not record[key]:
            raise ValueError(f"{path}: {where}: {key!r} must be a non-empty string, got {record[key]!r}")


def write_records(records: list[dict[str, str]], path: str | Path) -> Path:
    """Write records as JSONL (one per line)."""
    path = Path(path)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def pairs_from_records(model, records: list[dict[str, str]], *, source: str = "records") -> PromptPairs:
    """Tokenize records into ``PromptPairs``.

    Raises:
        ValueError: an answer that is not exactly one token, or a record whose clean and
            corrupt prompts tokenize to different lengths (both named with the record).
    """
    correct, incorrect = [], []
    for i, record in enumerate(records):
        for key, out in (("correct", correct), ("incorrect", incorrect)):
            try:
                out.append(model.to_single_token(record[key]))
            except ValueError as error:
                raise ValueError(
                    f"{source}: record {i}: {key} answer {record[key]!r} must be one token ({error})"
                ) from error
    clean, clean_mask = model.encode([r["clean"] for r in records])
    corrupt, corrupt_mask = model.encode([r["corrupt"] for r in records])
    clean_lengths, corrupt_lengths = clean_mask.sum(1).tolist(), corrupt_mask.sum(1).tolist()
    for i, (a, b) in enumerate(zip(clean_lengths, corrupt_lengths, strict=True)):
        if a != b:
            raise ValueError(
                f"{source}: record {i}: clean prompt {records[i]['clean']!r} has {a} tokens but corrupt "
                f"{records[i]['corrupt']!r} has {b}; patching needs equal lengths pair by pair"
            )
    return PromptPairs(
        clean=clean.cpu(),
        corrupt=corrupt.cpu(),
        correct=torch.tensor(correct),
        incorrect=torch.tensor(incorrect),
        positions=last_positions(clean_mask).cpu(),
        attention_mask=None if bool(clean_mask.all()) else clean_mask.cpu(),
    )


def load_pairs(path: str | Path, model) -> PromptPairs:
    """``read_records`` then ``pairs_from_records``: a pairs file as ``PromptPairs``."""
    return pairs_from_records(model, read_records(path), source=str(path))
