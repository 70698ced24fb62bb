"""The offline English corpus: sources present, splits disjoint, default tests on another source."""

from __future__ import annotations

import pytest

from mechinterp.data.corpus import fortune_texts, load_corpus, stdlib_docstrings, wordnet_texts


def test_default_corpus_trains_and_tests_on_different_sources():
    train, test = set(load_corpus("default", "train")), set(load_corpus("default", "test"))
    assert len(train) > 20000 and len(test) > 3000
    assert train.isdisjoint(test)
    assert set(fortune_texts()) == test  # held out: another source entirely
    assert set(wordnet_texts()) | set(stdlib_docstrings()) == train
    assert load_corpus("default", "test", max_texts=5, seed=1) == load_corpus(
        "default", "test", max_texts=5, seed=1
    )


@pytest.mark.parametrize("name", ["wordnet", "fortunes", "docstrings"])
def test_single_sources_split_by_hash(name):
    train, test = load_corpus(name, "train"), load_corpus(name, "test")
    assert set(train).isdisjoint(test) and 0.05 < len(test) / (len(train) + len(test)) < 0.15
    assert all(len(text.split()) >= 8 for text in test)


def test_wordnet_texts_are_glosses_and_examples():
    text = next(t for t in wordnet_texts() if "Kill: the destruction of an enemy plane" in t)
    assert "The pilot reported two kills during the mission." in text
