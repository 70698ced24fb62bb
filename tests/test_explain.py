"""mechinterp.explain: examples against a one-window-at-a-time literal reference, planted
units scored by a rule-following scorer, exact choice probabilities, and failures recorded
per unit (never a crashed run)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import mechinterp
from mechinterp.explain import (
    ChatError,
    ExampleConfig,
    LocalChat,
    OpenAIChat,
    Unit,
    collect_examples,
    explain_units,
    score_explanations,
)
from mechinterp.explain.prompts import parse_explanation
from mechinterp.models.tiny import tiny_hf_model
from tests.conftest import check_corpus

TEXTS = [
    f"In {1900 + 7 * i} Alice met Bob (at the [old] mill); then Carol said {i} words {{ok}}. "
    for i in range(24)
]
RULES = {"digits": r"[0-9]", "capital letters": r"[A-Z]", "closing brackets": r"[)\]}]"}


@pytest.fixture(scope="module")
def tiny():
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2, max_position_embeddings=4096)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


class TokenClassSAE(nn.Module):
    """A stand-in SAE at ``hook_embed`` with one latent per token class: it recovers the
    token from its embedding (nearest row) and fires 1.0 on members of the class."""

    hook_name = "hook_embed"

    def __init__(self, model, classes: list[str]):
        super().__init__()
        self.W_E = model.W_E.detach()
        table = torch.zeros(self.W_E.shape[0], len(classes))
        for latent, pattern in enumerate(classes):
            for token in range(self.W_E.shape[0]):
                if re.fullmatch(pattern, model.tokenizer.decode([token]) or " "):
                    table[token, latent] = 1.0
        self.register_buffer("table", table)

    def encode(self, x):
        ids = torch.cdist(x.reshape(-1, x.shape[-1]), self.W_E).argmin(-1)
        return self.table[ids].reshape(*x.shape[:-1], -1)


@torch.no_grad()
def literal_activation(model, unit: Unit, window: list[int]) -> torch.Tensor:
    """The unit's activation on one unpadded window, from a full cached run (no stop)."""
    _, cache = model.run_with_cache(torch.tensor([window]))
    value = cache[unit.hook_name][0]
    if unit.kind == "sae_latent":
        out = unit.sae.encode(value)[:, unit.index]
    elif unit.kind == "neuron":
        out = value[:, unit.index]
    elif unit.kind == "head_output":
        out = torch.stack(
            [value[p, unit.index] @ model.W_O[unit.layer, unit.index] for p in range(len(window))]
        )
        out = out.norm(dim=-1)
    elif unit.kind == "head_attention_to":
        out = torch.tensor(
            [
                sum(value[unit.index, q, k] for k in range(q + 1) if window[k] == unit.token)
                for q in range(len(window))
            ]
        )
    elif unit.kind == "head_attention":
        out = torch.tensor(
            [max(value[unit.index, q, k] for q in range(k, len(window))) for k in range(len(window))]
        )
        out[0] = 0.0
    else:
        out = value @ unit.direction + unit.bias
    return out[1:].float()


def test_examples_match_literal_reference(tiny):
    sae = TokenClassSAE(tiny, RULES.values())
    units = [
        Unit.sae_latent(sae, 0),
        Unit.neuron(0, 7),
        Unit.head_output(1, 2),
        Unit.head_attention(0, 1),
        Unit.head_attention_to(1, 3, tiny.to_single_token("e")),
        Unit.from_direction(
            "blocks.1.hook_resid_mid", torch.randn(64, generator=torch.Generator().manual_seed(0))
        ),
    ]
    config = ExampleConfig(context_len=20, batch_size=5, n_top=4, n_quantiles=2, n_per_quantile=2, n_random=3)
    examples = collect_examples(tiny, units, TEXTS[:8], config)
    # the same windows, literally: every text cut into BOS + 19 tokens
    windows = []
    for text in TEXTS[:8]:
        ids = tiny.tokenizer.encode(text, add_special_tokens=False)
        windows += [[1, *ids[s : s + 19]] for s in range(0, len(ids), 19) if len(ids[s : s + 19]) >= 2]
    text_of = {"".join(tiny.tokenizer.decode([t]) for t in w[1:]): w for w in windows}
    for unit, found in zip(units, examples, strict=True):
        literal = [literal_activation(tiny, unit, w) for w in windows]
        maxima = torch.stack([a.max() for a in literal])
        assert found.max_activation == pytest.approx(float(maxima.max()), rel=1e-4, abs=1e-5)
        assert found.threshold == pytest.approx(0.2 * float(maxima.max()), rel=1e-4, abs=1e-5)
        top_maxima = sorted(maxima.tolist(), reverse=True)[: len(found.top)]
        assert [c.max_activation for c in found.top] == pytest.approx(top_maxima, rel=1e-4, abs=1e-5)
        for context in [*found.top, *found.quantile, *found.random]:
            reference = literal[windows.index(text_of["".join(context.tokens)])]
            torch.testing.assert_close(torch.tensor(context.activations), reference, rtol=1e-4, atol=1e-4)
        assert all(c.max_activation > found.threshold for c in found.quantile)
        assert all(c.max_activation <= found.threshold for c in found.random)


def test_stops_after_deepest_layer_and_leaves_no_hooks(tiny):
    calls = []
    handle = tiny.blocks[1].register_forward_hook(lambda *args: calls.append(1))
    try:
        collect_examples(tiny, [Unit.neuron(0, 3)], TEXTS[:2], context_len=16, n_top=2)
        assert calls == []
        collect_examples(tiny, [Unit.neuron(0, 3), Unit.neuron(1, 3)], TEXTS[:2], context_len=16, n_top=2)
        assert calls
    finally:
        handle.remove()
    assert all(not hook._forward_hooks for hook in tiny.hook_dict.values())


def test_unit_errors_are_specific(tiny):
    with pytest.raises(TypeError, match="encode"):
        Unit.sae_latent(object(), 0)
    with pytest.raises(ValueError, match="closest"):
        collect_examples(tiny, [Unit.from_direction("blocks.0.hook_resid_psot", torch.ones(64))], TEXTS)
    with pytest.raises(ValueError, match="direction has 3 entries"):
        collect_examples(tiny, [Unit.from_direction("blocks.0.hook_resid_post", torch.ones(3))], TEXTS)
    with pytest.raises(TypeError, match="iterable of strings"):
        collect_examples(tiny, [Unit.neuron(0, 1)], "one string")


class ScriptedScorer:
    """Test scorers: they generate nothing and answer ``choice_probs`` by a script."""

    name = "scripted"

    def complete(self, conversations, *, max_tokens):
        return ["" for _ in conversations]


def rule_and_text(conversation, rules: dict):
    """The rule named by a scorer prompt's explanation, and the prompt's excerpt."""
    user = conversation[-1]["content"]
    rule = rules[re.search(r"Explanation of the unit: (.*)\n", user).group(1)]
    return rule, re.search(r"Text: (.*)\n\n", user, re.S).group(1)


class RuleScorer(ScriptedScorer):
    """A scorer that follows each explanation literally (the explanation names a regex in
    ``RULES``): the perfect scorer planted units should get full marks from."""

    name = "rules"

    def choice_probs(self, conversations, choices):
        out = []
        for conversation in conversations:
            rule, text = rule_and_text(conversation, RULES)
            marked = re.findall(r"<<(.*?)>>", text)
            if choices[0] == "Yes":
                hit = (
                    all(re.fullmatch(f"(?:{rule})+", m) for m in marked) if marked else re.search(rule, text)
                )
                out.append(np.array([0.9, 0.1]) if hit else np.array([0.1, 0.9]))
            else:
                probs = np.zeros(11)
                probs[10 if re.fullmatch(rule, marked[0]) else 0] = 1.0
                out.append(probs)
        return out


def test_planted_units_beat_shuffled_explanations(tiny):
    sae = TokenClassSAE(tiny, list(RULES.values()))
    units = [Unit.sae_latent(sae, i, label=name) for i, name in enumerate(RULES)]
    examples = collect_examples(
        tiny, units, TEXTS, context_len=12, n_top=3, n_quantiles=2, n_per_quantile=3, n_random=6
    )
    scores = score_explanations(
        tiny, units, {name: name for name in RULES}, scorer=RuleScorer(), examples=examples
    )
    frame = scores.to_frame().set_index(["method", "label"])
    assert frame["error"].isna().all()
    for metric in ("balanced_accuracy", "auc"):
        assert (frame.loc["detection", metric] == 1.0).all()
        assert (frame.loc["fuzzing", metric] == 1.0).all()
        assert (frame.loc[["detection", "fuzzing"], f"baseline_{metric}"] < 0.9).all()
    np.testing.assert_allclose(frame.loc["simulation", "correlation"].to_numpy(), 1.0, rtol=1e-9)
    assert (frame.loc["simulation", "baseline_correlation"] < 0.5).all()
    assert frame.loc["simulation", "baseline_correlation"].notna().all()
    assert set(frame["shuffled"]) == set(RULES) and (frame["shuffled"] != frame["explanation"]).all()


def test_a_constant_simulation_counts_as_correlation_zero():
    from mechinterp.explain.scoring import _metrics

    flat = np.zeros(11)
    flat[0] = 1.0  # the scorer rates every token 0: the explanation never matches
    found = _metrics("simulation", [flat] * 6, [0.0, 2.0, 0.0, 1.0, 0.0, 3.0])
    assert found["correlation"] == 0.0 and "error" not in found
    assert np.isnan(_metrics("simulation", [flat] * 6, [0.0] * 6)["correlation"])  # nothing varies


def test_parse_explanation():
    assert parse_explanation("I see years.\n[EXPLANATION]: four-digit years\nmore") == "four-digit years"
    assert parse_explanation('"closing brackets"\n\n1. The first excerpt ...') == "closing brackets"
    for empty in ("", "  \n", "[EXPLANATION]:", "[EXPLANATION]: ''"):
        with pytest.raises(ValueError, match="empty explanation"):
            parse_explanation(empty)
    # a small model that echoes its prompt has not explained anything
    shown = (
        "Find what the active tokens have in common (which words or symbols, in what context).\n"
        "Excerpt 1: in <<1984>> the mill closed"
    )
    for echo in (
        "Excerpt 1: in the mill",
        "[EXPLANATION]: in <<1984>> the mill",
        "The unit responds to what the active tokens have in common (which words or symbols",
    ):
        with pytest.raises(ValueError, match="copies the prompt"):
            parse_explanation(echo, shown)
    assert parse_explanation("[EXPLANATION]: years such as 1984", shown) == "years such as 1984"


def test_choice_probs_are_exact_sequence_probabilities(tiny):
    chat = LocalChat(tiny, batch_size=2)
    conversations = [[{"role": "user", "content": f"rate {i}"}] for i in range(3)]
    choices = ["1", "10", "Yes", "Y", "No"]
    found = chat.choice_probs(conversations, choices)
    for conversation, probs in zip(conversations, found, strict=True):
        prompt = chat.render(conversation)

        @torch.no_grad()
        def p(prefix: str, token: str, prompt=prompt) -> float:
            ids = prompt + tiny.tokenizer.encode(prefix, add_special_tokens=False)
            logits = tiny(torch.tensor([ids]))[0, -1].softmax(-1)
            return float(logits[tiny.tokenizer.convert_tokens_to_ids(token)])

        raw = [
            p("", "1") * (1 - p("1", "0")),
            p("", "1") * p("1", "0"),
            p("", "Y") * p("Y", "e") * p("Ye", "s"),
            p("", "Y") * (1 - p("Y", "e")),
            p("", "N") * p("N", "o"),
        ]
        np.testing.assert_allclose(probs, np.array(raw) / sum(raw), rtol=1e-4)


def test_cached_generation_equals_full_reruns(tiny):
    chat = LocalChat(tiny)
    prompt = chat.render([{"role": "user", "content": "hello there"}])
    ids, _ = chat.generate(prompt, max_tokens=12)
    reference = tiny.generate(torch.tensor([prompt]), max_new_tokens=12)[0, len(prompt) :].tolist()
    assert ids == reference[: len(ids)]


class Replies:
    """An explainer that answers from a fixed list (one reply, or a ChatError, per unit)."""

    name = "fixed"

    def __init__(self, replies):
        self.replies = replies

    def complete(self, conversations, *, max_tokens):
        return list(self.replies[: len(conversations)])

    def choice_probs(self, conversations, choices):
        raise AssertionError("an explainer is not asked for choices")


def test_failures_are_recorded_per_unit(tiny):
    units = [Unit.neuron(0, i) for i in range(4)]
    examples = collect_examples(tiny, units, TEXTS[:6], context_len=16, n_top=2)
    replies = ["[EXPLANATION]: digits", "", ChatError("malformed", "no choices"), "[EXPLANATION]: names"]
    explained = explain_units(tiny, units, examples=examples, explainer=Replies(replies))
    errors = [e.error for e in explained.explanations]
    assert explained.texts() == {"L0N0": "digits", "L0N1": None, "L0N2": None, "L0N3": "names"}
    assert "empty explanation" in errors[1] and "malformed" in errors[2]
    # an unreachable scorer: every row recorded, the explanations and examples kept
    unreachable = OpenAIChat("http://127.0.0.1:9/v1", "nobody", max_retries=0, timeout=2)
    scores = score_explanations(tiny, units, explained, scorer=unreachable, method="detection")
    frame = scores.to_frame()
    assert len(frame) == 4 and frame["balanced_accuracy"].isna().all()
    assert frame.loc[0, "error"].count("unreachable") == 2  # the explanation and its baseline
    assert "no explanation: empty explanation" in frame.loc[1, "error"]
    assert scores.examples == explained.examples
    assert frame.loc[0, "shuffled"] == "names" and frame.loc[3, "shuffled"] == "digits"


def test_dashboard_shows_units_with_and_without_errors(tiny):
    from mechinterp.plotting import explanation_dashboard

    units = [Unit.neuron(0, i) for i in range(3)]
    examples = collect_examples(tiny, units, TEXTS, context_len=12, n_top=2)
    given = {"L0N0": "digits", "L0N1": None, "L0N2": "capital letters"}
    scores = score_explanations(
        tiny, units, given, scorer=RuleScorer(), method="detection", examples=examples
    )
    page = explanation_dashboard(scores)  # pandas keeps missing errors as NaN in a string column
    assert "no explanation: none given</td>" in page
    assert ">nan<" not in page


def test_examples_for_other_units_are_refused(tiny):
    units = [Unit.neuron(0, i) for i in range(2)]
    examples = collect_examples(tiny, units, TEXTS[:4], context_len=12, n_top=2)
    for call in (
        lambda: explain_units(tiny, units[::-1], examples=examples, explainer=Replies(["a", "b"])),
        lambda: score_explanations(tiny, units[:1], ["digits"], scorer=RuleScorer(), examples=examples),
    ):
        with pytest.raises(
            ValueError, match="examples must be collect_examples output for exactly these units"
        ):
            call()


def test_planted_token_class_unit_fires_on_its_class(tiny):
    from mechinterp.explain.planted import token_class_precision, token_class_unit

    def is_digit(s):
        return s.isdigit()

    unit = token_class_unit(tiny, "digits", is_digit, member_weight=0.2)
    precision, recall = token_class_precision(tiny, unit, is_digit)
    assert precision >= 0.9 and recall == 1.0
    [examples] = collect_examples(tiny, [unit], TEXTS, context_len=16, n_top=4)
    active = [t for c in examples.top for t, on in zip(c.tokens, c.active, strict=True) if on]
    assert len(active) >= 8 and np.mean([t.isdigit() for t in active]) >= 0.9


@pytest.mark.slow
def test_smollm2_chat_template_and_cached_generation(smollm2):
    model, _ = smollm2
    chat = LocalChat(model)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    reference = model.tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    reference = (
        reference["input_ids"] if isinstance(reference, dict) or hasattr(reference, "keys") else reference
    )
    assert chat.render(conversation) == list(reference)
    ids, _ = chat.generate(chat.render(conversation), max_tokens=6)
    full = model.generate(torch.tensor([reference]), max_new_tokens=6, stop_at_eos=False)
    assert ids == full[0, len(reference) :].tolist()[: len(ids)] and len(ids) > 0


def test_default_corpus_is_the_offline_english_corpus(tiny, monkeypatch):
    """Without corpus= or examples=, examples come from mechinterp.data.corpus's training split."""
    from mechinterp.explain import examples as examples_module

    asked = []

    def fake_load_corpus(name, split):
        asked.append((name, split))
        return ["The cat sat on the mat while 3 dogs barked (loudly) at the moon."] * 4

    monkeypatch.setattr(examples_module, "load_corpus", fake_load_corpus)
    unit = Unit.neuron(0, 1)
    explained = explain_units(tiny, [unit], explainer=Replies(["[EXPLANATION]: cats"]), n_examples=2)
    assert asked == [("default", "train")]
    assert explained.examples[0].unit == unit and explained.texts() == {"L0N1": "cats"}


CHAR_CLASSES = {
    "digits": str.isdigit,
    "capital letters": str.isupper,
    "closing brackets": lambda s: s in ")]}",
}


class ClassRuleScorer(ScriptedScorer):
    """Detection by the token class an explanation names (``CHAR_CLASSES``; the tiny
    tokenizer has one token per character), applied to the text's tokens: the scorer every
    planted unit's correct explanation should pass."""

    name = "class rules"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def choice_probs(self, conversations, choices):
        out = []
        for conversation in conversations:
            rule, text = rule_and_text(conversation, CHAR_CLASSES)
            tokens = [
                self.tokenizer.decode([t]) for t in self.tokenizer.encode(text, add_special_tokens=False)
            ]
            out.append(np.array([0.9, 0.1]) if any(map(rule, tokens)) else np.array([0.1, 0.9]))
        return out


class ExcerptOnlyScorer(ScriptedScorer):
    """Says Yes to long excerpts, whatever the explanation: a scorer that measures nothing."""

    name = "excerpt only"

    def choice_probs(self, conversations, choices):
        lengths = [len(c[-1]["content"].split("Text: ")[1]) for c in conversations]
        middle = np.median(lengths)
        return [np.array([0.8, 0.2]) if n > middle else np.array([0.3, 0.7]) for n in lengths]


def test_check_scorer_separates_a_reading_scorer_from_one_that_ignores_explanations(tiny):
    from mechinterp.explain import check_scorer

    config = ExampleConfig(context_len=12, n_top=4, n_quantiles=2, n_per_quantile=4, n_random=8)
    good = check_scorer(
        tiny, ClassRuleScorer(tiny.tokenizer), check_corpus(), classes=CHAR_CLASSES, example_config=config
    )
    assert good.margin() >= 0.3 and good.passes()
    matrix = good.scores["balanced_accuracy"]
    assert all(matrix[u, u] > np.delete(matrix[u], u).max() for u in range(len(good.labels)))
    blind = check_scorer(
        tiny, ExcerptOnlyScorer(), check_corpus(), classes=CHAR_CLASSES, example_config=config
    )
    assert blind.margin() == 0.0 and blind.margin("auc") == 0.0 and not blind.passes()
    assert "FAILS" in str(blind) and "passes" in str(good)
    frame = good.to_frame()
    assert len(frame) == 9 and frame["correct"].sum() == 3
    assert set(good.to_dict()) >= {"scores", "margin", "passes", "purity", "n_items"}


def test_check_scorer_needs_contexts_of_both_kinds(tiny):
    from mechinterp.explain import check_scorer

    with (
        pytest.raises(ValueError, match="at least two planted units with held-out"),
        pytest.warns(UserWarning),
    ):
        check_scorer(
            tiny,
            ExcerptOnlyScorer(),
            ["A1) b " * 12] * 8,
            classes=CHAR_CLASSES,
            example_config=ExampleConfig(context_len=12),
        )
    with pytest.raises(ValueError, match="at least two planted units"):
        check_scorer(tiny, ExcerptOnlyScorer(), TEXTS, classes={"digits": str.isdigit})


class BigramSAE(nn.Module):
    """A stand-in SAE at ``hook_embed`` with one latent that fires on ``t`` right after
    ``a`` (the bigram "at"): a ``t`` alone (as in "then") is a similar-looking negative."""

    hook_name = "hook_embed"

    def __init__(self, model):
        super().__init__()
        self.W_E = model.W_E.detach()
        self.a, self.t = (model.tokenizer.convert_tokens_to_ids(c) for c in "at")

    def encode(self, x):
        ids = torch.cdist(x.reshape(-1, x.shape[-1]), self.W_E).argmin(-1).reshape(x.shape[:-1])
        fires = (ids == self.t) & (torch.roll(ids, 1, dims=-1) == self.a)
        fires[..., 0] = False
        return fires.float()[..., None]


def test_similar_negatives_share_an_active_token_but_do_not_fire(tiny):
    unit = Unit.sae_latent(BigramSAE(tiny), 0, label="at")
    config = dict(context_len=10, n_top=4, n_quantiles=2, n_per_quantile=3, n_random=5)
    [plain] = collect_examples(tiny, [unit], check_corpus(), **config)
    [hard] = collect_examples(tiny, [unit], check_corpus(), n_similar=6, **config)
    assert plain.similar == () and len(hard.similar) == 6
    assert hard.random == plain.random and hard.quantile == plain.quantile
    for context in hard.similar:
        assert context.kind == "similar" and not any(context.active)
        assert "t" in context.tokens  # the token the unit fires on, here without the "a" before it
    # detection counts them as negatives
    scores = score_explanations(
        tiny,
        [unit, unit],
        ["digits", "closing brackets"],
        scorer=RuleScorer(),
        method="detection",
        examples=[hard, hard],
    )
    assert scores.to_frame()["n_items"].iloc[0] == 2 * (len(hard.quantile) + len(hard.random) + 6)
