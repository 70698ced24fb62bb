"""mechinterp.datasets: a planted corpus difference found, replicated and explained; the
log-odds statistic by hand; memory that does not grow with the corpus; hypotheses scored
against baselines; a planted model difference found by a crosscoder."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
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
WORDS = [
    "the cat sat on a mat",
    "we ate some soup",
    "rain fell all day",
    "a dog ran far away",
    "Alice met Bob",
]


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
    diff = diff_corpora(
        tiny, dictionary, a, b, labels=("plain", "with years"), context_len=24, progress=False
    )
    frame = diff.to_frame()
    digits = list(CLASSES).index("digits")
    assert int(frame["feature"].iloc[0]) == digits
    top = frame.iloc[0]
    assert top["freq_a"] == 0.0 and top["freq_b"] > 0.1
    assert top["z"] > 2.5 and top["ci_low"] > 0 and bool(top["replicates"])
    assert diff.top(3) == [digits]  # nothing else differs in a way that replicates
    # literally: the character tokenizer cuts each text into windows of 23 characters after BOS
    from mechinterp.datasets.reading import splits

    for c, corpus in (("a", a), ("b", b)):
        for split, held in (("discovery", False), ("holdout", True)):
            pieces = [
                t[i : i + 23]
                for t, out in splits(corpus, 0.5, 0)
                if out == held
                for i in range(0, len(t), 23)
            ]
            counts = diff.counts[split, c]
            assert counts.windows == len(pieces) and counts.tokens == sum(map(len, pieces))
            assert counts.window_fires[digits] == sum(any(ch.isdigit() for ch in p) for p in pieces)
            assert counts.token_fires[digits] == sum(ch.isdigit() for p in pieces for ch in p)
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


class ClassScorer:
    """A scripted scorer that reads explanations: detection says Yes when the text holds a
    character of the class the explanation names (``CLASSES``); a hypothesis is a regex of
    ``HYPOTHESES`` searched in the text. Unknown descriptions get 50/50."""

    name = "class rules"

    def complete(self, conversations, *, max_tokens):
        return ["" for _ in conversations]

    def choice_probs(self, conversations, choices):
        out = []
        for conversation in conversations:
            user = conversation[-1]["content"]
            text = re.search(r"Text: (.*)\n\n", user, re.S).group(1)
            found = re.search(r"(?:Explanation of the unit|Description): (.*)\n", user).group(1)
            if found in CLASSES:
                hit = any(CLASSES[found](c) for c in text)
            elif found in HYPOTHESES:
                hit = re.search(HYPOTHESES[found], text) is not None
            else:
                out.append(np.array([0.5, 0.5]))
                continue
            out.append(np.array([0.9, 0.1]) if hit else np.array([0.1, 0.9]))
        return out


class ClassExplainer:
    """A scripted explainer: names the class of ``CLASSES`` most of the listed active tokens belong to."""

    name = "class explainer"

    def complete(self, conversations, *, max_tokens):
        replies = []
        for conversation in conversations:
            tokens = re.findall(r"(\S+|' ') \(\d+\)", conversation[-1]["content"])
            tokens = [" " if t == "' '" else t for t in tokens]
            votes = {name: sum(map(rule, tokens)) for name, rule in CLASSES.items()}
            replies.append(f"[EXPLANATION]: {max(votes, key=votes.get)}")
        return replies

    def choice_probs(self, conversations, choices):
        raise AssertionError("the explainer is not asked to score")


HYPOTHESES = {
    "mentions a four-digit year": r"\b\d{4}\b",
    "mentions an animal": r"cat|dog",
    "names a person": "Alice|Bob",
}


def test_planted_feature_explanation_beats_shuffled_with_a_checked_scorer(tiny):
    from mechinterp.explain import ExampleConfig, check_scorer

    scorer = ClassScorer()
    check = check_scorer(
        tiny,
        scorer,
        check_corpus(),
        classes={k: CLASSES[k] for k in ("digits", "capital letters", "closing brackets")},
        example_config=ExampleConfig(context_len=12, n_top=4, n_quantiles=2, n_per_quantile=4, n_random=8),
    )
    assert check.passes()
    a, b = corpora()
    config = ExampleConfig(context_len=24, n_top=5, n_quantiles=2, n_per_quantile=3, n_random=6)
    diff = diff_corpora(
        tiny,
        TokenClassDictionary(tiny),
        a,
        b,
        context_len=24,
        explain=3,
        explainer=ClassExplainer(),
        scorer=scorer,
        example_config=config,
        progress=False,
    )
    top = diff.to_frame().iloc[0]
    assert top["feature"] == list(CLASSES).index("digits") and top["explanation"] == "digits"
    assert top["score"] == 1.0 and top["shuffled_score"] < 0.8
    assert diff.scores.to_frame()["error"].isna().all()


def test_hypothesis_beats_baselines_and_shuffled_words(tiny):
    from mechinterp.datasets import check_hypothesis

    a, b = corpora(240)
    check = check_hypothesis(
        "mentions a four-digit year",
        held_out(a),
        held_out(b),
        ClassScorer(),
        baselines=["mentions an animal", "names a person"],
        labels=("plain", "with years"),
        n_texts=100,
    )
    frame = check.to_frame().set_index("hypothesis")
    assert list(frame["kind"]) == ["hypothesis", "baseline", "baseline", "shuffled"]
    assert frame.loc["mentions a four-digit year", "auc"] > 0.6
    assert frame.loc["mentions a four-digit year", "p_value"] < 0.01
    assert (frame.loc[frame["kind"] != "hypothesis", "auc"] - 0.5).abs().max() < 0.1
    assert check.margin() > 0.1 and check.supported()
    assert (frame["n_failed"] == 0).all()
    with pytest.raises(ValueError, match="non-empty strings"):
        check_hypothesis([""], a, b, ClassScorer())


# ------------------------------------------------------------------------------ model diffing


@pytest.fixture(scope="module")
def model_pair(tiny):
    """``(A, B, v)``: B is A with ``v`` (3x a typical embedding norm) added to the embedding
    of every digit: the planted change."""
    import copy

    tuned = copy.deepcopy(tiny)
    digits = [tiny.tokenizer.convert_tokens_to_ids(c) for c in "0123456789"]
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    v = v / v.norm()
    with torch.no_grad():
        tuned.embed.W_E[digits] += 3 * tiny.embed.W_E.norm(dim=-1).mean() * v
    return tiny, tuned, v


def test_relative_decoder_norms_of_a_hand_built_crosscoder():
    from mechinterp.datasets.models import Crosscoder
    from mechinterp.sae import SAE, SAEConfig

    sae = SAE.create(SAEConfig(architecture="relu", d_in=8, d_sae=4, hook_name="blocks.0.hook_resid_pre"))
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_dec[0, :4] = torch.tensor([3.0, 0, 0, 0])  # A only
        sae.W_dec[1, 4:] = torch.tensor([0, 2.0, 0, 0])  # B only
        sae.W_dec[2] = torch.tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0])  # shared, same direction
        sae.W_dec[3] = torch.tensor([0, 1.0, 0, 0, 0, 0, 3.0, 4.0])  # mostly B, another direction
    cc = Crosscoder(sae, ("base", "tuned"))
    torch.testing.assert_close(cc.decoder_norms(), torch.tensor([[3.0, 0], [0, 2.0], [1.0, 1.0], [1.0, 5.0]]))
    torch.testing.assert_close(cc.relative_norms(), torch.tensor([0.0, 1.0, 0.5, 5 / 6]))
    table = cc.latent_table(specific=0.2)
    assert table["specific_to"].tolist() == ["base", "tuned", "shared", "tuned"]
    assert table["cosine"].tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0])
    assert cc.specific_latents("tuned", specific=0.2) == [1, 3] and cc.specific_latents("base") == [0]
    with pytest.raises(ValueError, match="must be one of"):
        cc.specific_latents("other")
    with pytest.raises(ValueError, match="side by side"):
        Crosscoder(SAE.create(SAEConfig(architecture="relu", d_in=7, d_sae=4, hook_name="x")))


def test_batchtopk_crosscoder_finds_directions_specific_to_each_model():
    """Synthetic paired activations: shared sparse atoms, plus one direction only A has and
    one only B has (each on a random 10% of rows, independent of the atoms)."""
    from mechinterp.datasets.models import Crosscoder
    from mechinterp.sae import TrainingConfig, train_sae

    g = torch.Generator().manual_seed(0)
    n, d, atoms = 20000, 32, 24
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    codes = (torch.rand(n, atoms, generator=g) < 0.08) * torch.rand(n, atoms, generator=g) * 2
    shared = codes @ dictionary
    only_a, only_b = (x / x.norm() for x in torch.randn(2, d, generator=g))
    flag_b, flag_a = ((torch.rand(n, 1, generator=g) < 0.1).float() for _ in range(2))
    x = torch.cat([shared + 2 * flag_a * only_a, shared + 2 * flag_b * only_b], dim=-1)
    sae = train_sae(
        x,
        d_sae=48,
        architecture="batchtopk",
        k=2,
        training=TrainingConfig(samples=256 * 600, batch_size=256),
        progress=False,
    )
    assert (
        sae.cfg.architecture == "jumprelu" and float(sae.threshold.detach().min()) > 0
    )  # theta replaces the batch
    cc = Crosscoder(sae, ("A", "B"))
    (a_latent,), (b_latent,) = cc.specific_latents("A"), cc.specific_latents("B")
    cosine = torch.nn.functional.cosine_similarity
    assert float(cosine(sae.W_dec.detach()[a_latent, :d], only_a, dim=0)) > 0.95
    assert float(cosine(sae.W_dec.detach()[b_latent, d:], only_b, dim=0)) > 0.95


def test_dedicated_latents_carry_a_difference_that_always_comes_with_a_shared_atom():
    """B = A plus a direction on every row where atom 0 fires (like a fine-tune that changes
    what a model does at every comma). With tied shared latents and dedicated A-only / B-only
    latents, a B-only latent carries the direction and fires where atom 0 does."""
    from mechinterp.datasets.models import Crosscoder
    from mechinterp.sae import TrainingConfig, train_sae

    g = torch.Generator().manual_seed(0)
    n, d, atoms = 20000, 32, 24
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    codes = (torch.rand(n, atoms, generator=g) < 0.08) * torch.rand(n, atoms, generator=g) * 2
    shared = codes @ dictionary
    only_b = torch.randn(d, generator=g)
    only_b /= only_b.norm()
    with_atom = codes[:, 0] > 0
    x = torch.cat([shared, shared + 2 * with_atom[:, None].float() * only_b], dim=-1)
    training = TrainingConfig(samples=256 * 600, batch_size=256)
    sae = train_sae(
        x, d_sae=48, architecture="batchtopk", k=3, training=training, progress=False, tied_halves=40,
        exclusive_halves=4,
    )  # fmt: skip
    w = sae.W_dec.detach()
    assert torch.equal(w[:40, :d], w[:40, d:])  # shared: one vector for both models
    assert (w[40:44, d:] == 0).all() and (w[44:, :d] == 0).all()  # A-only, B-only
    cc = Crosscoder(sae, ("A", "B"))
    assert cc.relative_norms()[44:].min() == 1.0 and cc.relative_norms()[:40].sub(0.5).abs().max() < 1e-6
    acts = sae.encode(x).detach()
    b_latent = 44 + int(acts[:, 44:].sum(0).argmax())
    assert float(torch.nn.functional.cosine_similarity(w[b_latent, d:], only_b, dim=0)) > 0.9
    assert float(((acts[:, b_latent] > 0) == with_atom).float().mean()) > 0.9
    with pytest.raises(ValueError, match="tied_halves"):
        train_sae(x, d_sae=48, architecture="batchtopk", k=3, tied_halves=40, exclusive_halves=5)


def test_crosscoder_on_two_models_points_at_the_planted_token_class(model_pair, tmp_path):
    from mechinterp.datasets.models import Crosscoder, diff_models, train_crosscoder
    from mechinterp.explain import ExampleConfig
    from mechinterp.sae import TrainingConfig

    base, tuned, _ = model_pair
    _, texts = corpora(200)
    options = {
        "d_sae": 32, "k": 2, "labels": ("base", "tuned"), "buffer_tokens": 2048, "progress": False,
        "training": TrainingConfig(samples=128 * 400, batch_size=128, lr=1e-2, checkpoint_every=200),
    }  # fmt: skip
    cc = train_crosscoder(base, tuned, texts, "blocks.0.hook_resid_pre", checkpoint_dir=tmp_path, **options)
    # the most tuned-leaning latents fire on the digits the change was planted on
    leaning = [int(i) for i in cc.latent_table().sort_values("relative_norm")["latent"].tail(2)]
    assert cc.relative_norms()[leaning].min() > 0.55
    result = diff_models(
        base,
        tuned,
        cc,
        texts,
        specific=0.45,
        n_latents=2,
        example_config=ExampleConfig(context_len=24, n_top=5),
    )
    for examples in result.examples[:2]:
        active = [t for c in examples.top for t, on in zip(c.tokens, c.active, strict=True) if on]
        assert active and np.mean([t.isdigit() for t in active]) > 0.8
    assert set(result.to_frame()["latent"]) == set(result.latents)
    # resumed from the finished checkpoint: no step is taken again, the same crosscoder comes back
    again = train_crosscoder(
        base, tuned, texts, "blocks.0.hook_resid_pre", checkpoint_dir=tmp_path, **options
    )
    torch.testing.assert_close(again.sae.W_dec, cc.sae.W_dec)
    cc.save(tmp_path / "cc")
    torch.testing.assert_close(Crosscoder.load(tmp_path / "cc").relative_norms(), cc.relative_norms())


def test_paired_activations_are_the_streams_rows_and_train_a_crosscoder(model_pair):
    from mechinterp.datasets.models import paired_activations, train_crosscoder
    from mechinterp.sae import TrainingConfig
    from mechinterp.sae.activations import content_tokens

    base, tuned, v = model_pair
    _, texts = corpora(200)
    hook = "blocks.0.hook_resid_pre"
    rows = paired_activations(base, tuned, texts, hook, context=64, outlier_ratio=None)
    tokens, mask = base.encode(texts)
    tokens, mask = tokens[:, :64], mask[:, :64]
    keep = content_tokens(base, tokens, mask)
    _, cache = base.run_with_cache(tokens, attention_mask=mask, names_filter=[hook])
    # one row per content token, A's activation then B's (texts in the stream's shuffled order)
    assert rows.shape == (int(keep.sum()), 128) and rows.dtype == torch.float32
    torch.testing.assert_close(rows[:, :64].sum(0), cache[hook][keep].float().sum(0), rtol=1e-4, atol=1e-3)
    # B - A is the planted change: along v on the digit tokens, nothing elsewhere
    digits = [base.tokenizer.convert_tokens_to_ids(c) for c in "0123456789"]
    changed = (rows[:, 64:] - rows[:, :64]).norm(dim=-1) > 1e-4
    assert int(changed.sum()) == int(torch.isin(tokens[keep], torch.tensor(digits)).sum()) > 0
    direction = (rows[changed, 64:] - rows[changed, :64]).mean(0)
    assert float(torch.nn.functional.cosine_similarity(direction, v, dim=0)) > 0.999
    assert paired_activations(base, tuned, texts, hook, context=64, max_tokens=50).shape == (50, 128)
    # training on the rows (many epochs, no model forward) finds latents leaning to the change
    training = TrainingConfig(samples=128 * 400, batch_size=128, lr=1e-2)
    cc = train_crosscoder(base, tuned, rows, hook, d_sae=32, k=2, training=training, progress=False)
    assert cc.hook_name == hook and cc.relative_norms().max() > 0.55
    with pytest.raises(ValueError, match="paired_activations instead"):
        train_crosscoder(base, tuned, rows, hook, d_sae=32, context=64)
    with pytest.raises(ValueError, match=r"\[N, 128\]"):
        train_crosscoder(base, tuned, rows[:, :64], hook, d_sae=32)


def test_sae_difference_ranks_the_planted_feature_first(model_pair):
    from mechinterp.datasets.models import sae_difference
    from mechinterp.sae import SAE, SAEConfig

    base, tuned, v = model_pair
    sae = SAE.create(
        SAEConfig(architecture="jumprelu", d_in=64, d_sae=8, hook_name="blocks.0.hook_resid_pre"), seed=3
    )
    with torch.no_grad():
        sae.W_enc[:, 0] = v  # feature 0 reads the planted direction
        sae.threshold.fill_(1.0)
    _, texts = corpora(120)
    diff = sae_difference(base, tuned, sae, texts, labels=("base", "tuned"), context_len=24, progress=False)
    top = diff.to_frame().iloc[0]
    assert top["feature"] == 0 and bool(top["replicates"]) and top["freq_b"] > top["freq_a"]


def test_describe_corpus_groups_features_that_fire_together(tiny):
    from mechinterp.datasets import describe_corpus
    from mechinterp.datasets.describe import average_linkage

    reference, _ = corpora(120)
    rng = np.random.default_rng(1)
    texts = [t + f" (in {rng.integers(1700, 2030)})" if i % 3 == 0 else t for i, t in enumerate(reference)]
    description = describe_corpus(
        tiny, TokenClassDictionary(tiny), texts, reference, n_features=5, context_len=24, progress=False
    )
    frame = description.to_frame().set_index("feature")
    digits, brackets = list(CLASSES).index("digits"), list(CLASSES).index("closing brackets")
    assert set(frame.index) == {digits, brackets}
    assert frame.loc[digits, "cluster"] == frame.loc[brackets, "cluster"]
    assert "<<" in frame.loc[digits, "example"]
    jaccard = description.jaccard()
    assert jaccard[0, 1] > 0.5 and np.allclose(np.diag(jaccard), 1.0)
    reused = describe_corpus(
        tiny, TokenClassDictionary(tiny), texts, n_features=5, context_len=24, diff=description.diff
    )
    pd.testing.assert_frame_equal(reused.to_frame(), description.to_frame())
    similarity = np.array([[1, 0.9, 0.1, 0], [0.9, 1, 0.2, 0.1], [0.1, 0.2, 1, 0.5], [0, 0.1, 0.5, 1.0]])
    assert average_linkage(similarity, 0.4) == [0, 0, 1, 1]
    assert average_linkage(similarity, 0.95) == [0, 1, 2, 3]


def test_figures_and_offline_report(tiny, model_pair, tmp_path):
    from mechinterp.datasets import Crosscoder, check_hypothesis
    from mechinterp.datasets.models import ModelDiff
    from mechinterp.plotting import (
        corpus_diff_figure,
        crosscoder_figure,
        hypothesis_figure,
        write_diff_report,
    )
    from mechinterp.sae import SAE, SAEConfig

    a, b = corpora(60)
    diff = diff_corpora(tiny, TokenClassDictionary(tiny), a, b, context_len=24, progress=False)
    check = check_hypothesis(
        "mentions a four-digit year", a, b, ClassScorer(), baselines=["names a person"], n_texts=20
    )
    cc = Crosscoder(
        SAE.create(SAEConfig(architecture="relu", d_in=128, d_sae=16, hook_name="blocks.0.hook_resid_pre"))
    )
    model_diff = ModelDiff(crosscoder=cc, latents=(0,), examples=())
    assert len(corpus_diff_figure(diff).data) == 2
    assert list(hypothesis_figure(check).data[0].y) == list(check.to_frame()["hypothesis"])
    assert crosscoder_figure(cc).data[0].x.shape == (16,)
    path = write_diff_report(tmp_path / "report.html", diff=diff, hypothesis=check)
    page = path.read_text()
    assert page.count("plotly.js v") == 1 and 'src="http' not in page  # inlined once, nothing fetched
    assert "Hypothesis check" in page and "Corpus diff" in page
    assert model_diff.crosscoder is cc
