"""Prompt-pair datasets: the IOI generator on SmolLM2 and JSON / JSONL record files."""

from __future__ import annotations

import json

import pytest
import torch

from mechinterp.data import ioi_pairs, load_pairs, read_records, write_records
from mechinterp.data.ioi import NAMES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(smollm2):
    return smollm2[0]


def test_ioi_pairs_have_equal_lengths_single_token_names_and_one_swapped_name(model):
    pairs = ioi_pairs(model, 24, seed=3)
    assert pairs.clean.shape == pairs.corrupt.shape == (24, 15)
    assert pairs.attention_mask is None  # built-in templates all tokenize to one length
    assert (pairs.positions == 14).all()
    names = {model.to_single_token(f" {n}") for n in NAMES}
    assert set(pairs.correct.tolist()) <= names and set(pairs.incorrect.tolist()) <= names
    assert (pairs.correct != pairs.incorrect).all()
    differs = pairs.clean != pairs.corrupt
    assert (differs.sum(1) == 1).all()  # only the second subject mention changes ...
    assert (differs[:, 10]).all()  # ... at the same position in every template
    assert torch.equal(pairs.clean[:, 10], pairs.incorrect)  # clean repeats the subject
    assert torch.equal(pairs.corrupt[:, 10], pairs.correct)  # corrupt repeats the indirect object


def test_ioi_pairs_are_seeded(model):
    assert torch.equal(ioi_pairs(model, 6, seed=1).clean, ioi_pairs(model, 6, seed=1).clean)
    assert not torch.equal(ioi_pairs(model, 6, seed=1).clean, ioi_pairs(model, 6, seed=2).clean)


@torch.no_grad()
def test_smollm2_prefers_the_indirect_object_on_clean_and_the_subject_on_corrupt(model):
    pairs = ioi_pairs(model, 24, seed=5)
    metric = pairs.metric()
    clean = metric.score(model(pairs.clean)[:, -1], torch.arange(24))
    corrupt = metric.score(model(pairs.corrupt)[:, -1], torch.arange(24))
    assert (clean > 0).float().mean() >= 0.8
    assert (corrupt < 0).float().mean() >= 0.8


def test_ioi_pairs_rejects_bad_arguments(model):
    with pytest.raises(ValueError, match="at least 1"):
        ioi_pairs(model, 0)
    with pytest.raises(ValueError, match="at least 2 names"):
        ioi_pairs(model, 2, names=["Mary", "Zyxwvutsrq"])


RECORDS = [
    {
        "clean": "The capital of France is",
        "corrupt": "The capital of Italy is",
        "correct": " Paris",
        "incorrect": " Rome",
    },
    {
        "clean": "When Mary and John went to the store, John gave a drink to",
        "corrupt": "When Mary and John went to the store, Mary gave a drink to",
        "correct": " Mary",
        "incorrect": " John",
    },
]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_records_load_with_padding_and_last_token_positions(model, tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".jsonl":
        write_records(RECORDS, path)
    else:
        path.write_text(json.dumps(RECORDS))
    pairs = load_pairs(path, model)
    assert read_records(path) == RECORDS
    assert pairs.clean.shape == (2, 15)
    assert pairs.attention_mask is not None and pairs.attention_mask[0].sum() == 6
    assert pairs.positions.tolist() == [5, 14]
    assert pairs.correct.tolist() == [model.to_single_token(" Paris"), model.to_single_token(" Mary")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"clean": "a", "corrupt": "b", "correct": " x"}\n', r"line 1 has missing \['incorrect'\] keys"),
        ('{"clean": "a"\n', "line 1 is not valid JSON"),
        (
            '{"clean": "a", "corrupt": "b", "correct": " x", "incorrect": 3}\n',
            "'incorrect' must be a non-empty string",
        ),
        ("\n", "holds no records"),
    ],
)
def test_bad_record_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_records(path)


def test_record_errors_name_the_record(model, tmp_path):
    bad_answer = {**RECORDS[0], "correct": " Parisian city"}
    with pytest.raises(ValueError, match=r"record 1: correct answer ' Parisian city' must be one token"):
        load_pairs(write_records([RECORDS[0], bad_answer], tmp_path / "a.jsonl"), model)
    unequal = {**RECORDS[0], "corrupt": "The capital city of Italy is"}
    with pytest.raises(ValueError, match="record 0: clean prompt .* has 6 tokens but corrupt .* has 7"):
        load_pairs(write_records([unequal], tmp_path / "b.jsonl"), model)
    with pytest.raises(ValueError, match="expected a .json or .jsonl file"):
        read_records(write_records(RECORDS, tmp_path / "c.txt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_records(tmp_path / "missing.jsonl")
