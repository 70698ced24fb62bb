"""mechinterp.datasets: a planted corpus difference found, replicated and explained; the
log-odds statistic by hand; memory that does not grow with the corpus; hypotheses scored
against baselines; a planted model difference found by a crosscoder."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import mechinterp
from mechinterp.datasets import FeatureCounts, diff_corpora, feature_counts, held_out, log_odds
from mechinterp.models.tiny import tiny_hf_model
from tests.conftest import check_corpus

# one feature per character class of the tiny character tokenizer
CLASSES = {
    "digits": str.isdigit,
    "capital letters": str.isupper,
    "closing brackets": lambda s: s in ")]}",
    "vowels": lambda s: s in "aeiou",
    "spaces": lambda s: s == " ",
    "other lowercase letters": lambda s: s.islower() and s not in "aeiou",
}
WORDS = ["the cat sat on a mat", "we ate some soup", "rain fell all day", "a dog ran far away", "Alice met Bob"]


@pytest.fixture(scope="module")
def tiny():
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2, max_position_embeddings=4096)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


class TokenClassDictionary(nn.Module):
    """A dictionary at ``hook_embed`` with one feature per class of ``CLASSES``: it recovers
    each token from its embedding (nearest row) and fires 1.0 on members of the class."""

    hook_name = "hook_embed"

    def __init__(self, model):
        super().__init__()
        self.W_E = model.W_E.detach()
        table = torch.zeros(self.W_E.shape[0], len(CLASSES))
        for token in range(self.W_E.shape[0]):
            text = model.tokenizer.decode([token])
            for feature, rule in enumerate(CLASSES.values()):
                table[token, feature] = float(len(text) == 1 and rule(text))
        self.register_buffer("table", table)

    def encode(self, x):
        ids = torch.cdist(x.reshape(-1, x.shape[-1]), self.W_E).argmin(-1)
        return self.table[ids].reshape(*x.shape[:-1], -1)


def corpora(n: int = 120, seed: int = 0) -> tuple[list[str], list[str]]:
    """Corpus A (no digits) and B: A with a four-digit year added to a third of the texts."""
    rng = np.random.default_rng(seed)
    a = [f"{WORDS[i % 5]} and {WORDS[(i * 3 + 1) % 5].lower()} then" for i in range(n)]
    b = [text + f" in {rng.integers(1700, 2030)}" if i % 3 == 0 else text for i, text in enumerate(a)]
    return a, b


def test_log_odds_by_hand():
    y_a, y_b = torch.tensor([3.0, 50.0]), torch.tensor([40.0, 50.0])
    delta, se = log_odds(y_a, 100, y_b, 100, prior=10.0)
    p = (y_a + y_b + 0.5) / 201
    alpha, beta = 10 * p, 10 * (1 - p)
    expected = np.log((40 + alpha[0]) / (60 + beta[0])) - np.log((3 + alpha[0]) / (97 + beta[0]))
    assert float(delta[0]) == pytest.approx(float(expected))
    assert float(delta[1]) == pytest.approx(0.0, abs=1e-12)
    terms = (40 + alpha[0], 60 + beta[0], 3 + alpha[0], 97 + beta[0])
    assert float(se[0]) == pytest.approx(float(sum(1 / t for t in terms) ** 0.5))
    # a stronger prior shrinks the same counts toward no difference
    assert float(log_odds(y_a, 100, y_b, 100, prior=1000.0)[0][0]) < float(delta[0])
    with pytest.raises(ValueError, match="prior must be positive"):
        log_odds(y_a, 100, y_b, 100, prior=0.0)


def test_planted_years_top_the_diff_and_replicate(tiny):
    a, b = corpora()
    dictionary = TokenClassDictionary(tiny)
    diff = diff_corpora(tiny, dictionary, a, b, labels=("plain", "with years"), context_len=24, progress=False)
    frame = diff.to_frame()
    digits = list(CLASSES).index("digits")
    assert int(frame["feature"].iloc[0]) == digits
    top = frame.iloc[0]
    assert top["freq_a"] == 0.0 and top["freq_b"] > 0.1
    assert top["z"] > 2.5 and top["ci_low"] > 0 and bool(top["replicates"])
    assert diff.top(3) == [digits]  # nothing else differs in a way that replicates
    summary = diff.summary()
    assert summary["of those, replicate on held-out texts"] >= 1
    # the held-out split is the texts `held_out` returns
    held_texts = held_out(b)
    assert 0 < len(held_texts) < len(b)
    counts = feature_counts(tiny, dictionary, held_texts, holdout=0.0, context_len=24, progress=False)[0]
    assert counts.window_fires.tolist() == diff.counts["holdout", "b"].window_fires.tolist()


def test_accumulator_state_does_not_grow_with_the_corpus(tiny):
    dictionary = TokenClassDictionary(tiny)
    a, _ = corpora(40)
    small = feature_counts(tiny, dictionary, a[:4], context_len=24, progress=False)[0]
    large = feature_counts(tiny, dictionary, a * 3, context_len=24, progress=False)[0]
    assert large.windows > 10 * small.windows
    assert small.state_nbytes() == large.state_nbytes() == 3 * len(CLASSES) * 8
    assert FeatureCounts(len(CLASSES)).state_nbytes() == small.state_nbytes()


def test_errors_are_specific(tiny):
    dictionary = TokenClassDictionary(tiny)
    with pytest.raises(TypeError, match="not one string"):
        diff_corpora(tiny, dictionary, "one text", ["x"])
    with pytest.raises(TypeError, match="encode"):
        diff_corpora(tiny, object(), ["a"], ["b"])
    with pytest.raises(ValueError, match="holdout must lie"):
        diff_corpora(tiny, dictionary, ["a b"], ["c d"], holdout=1.0, progress=False)
    with pytest.raises(TypeError, match="read twice"):
        diff_corpora(tiny, dictionary, iter(["a b"]), ["c d"], explain=2)
