"""Token attribution against captum 0.9 on the HF model, literal one-forward-per-cell
references, and planted truths (completeness, padding, chunking)."""

from __future__ import annotations

import warnings

import pytest
import torch

captum_attr = pytest.importorskip("captum.attr")

from mechinterp.data import PromptPairs  # noqa: E402
from mechinterp.models.tiny import tiny_hf_model  # noqa: E402
from mechinterp.token_attribution import (  # noqa: E402
    TokenAttribution,
    ZeroBaselineWarning,
    attribute_tokens,
    compare_methods,
    integration_points,
)
from tests.conftest import assert_close_to_scale  # noqa: E402

CORRECT, INCORRECT = 5, 7


def hf_logit_diff(hf_model, position: int = -1):
    """captum's forward function: logit difference at ``position`` from input embeddings."""

    def forward(embeds: torch.Tensor) -> torch.Tensor:
        logits = hf_model(inputs_embeds=embeds).logits[:, position]
        return logits[:, CORRECT] - logits[:, INCORRECT]

    return forward


def captum_ig(hf_model, tokens, baseline_tokens, steps: int, method: str, *, delta: bool = False):
    """captum's integrated gradients summed over the embedding axis (and, with ``delta``, its
    convergence delta: the sum minus ``f(x) - f(baseline)``)."""
    embed = hf_model.get_input_embeddings()
    with torch.no_grad():
        inputs, baselines = embed(tokens), embed(baseline_tokens)
    ig = captum_attr.IntegratedGradients(hf_logit_diff(hf_model))
    found = ig.attribute(
        inputs, baselines=baselines, n_steps=steps, method=method, return_convergence_delta=delta
    )
    if delta:
        return found[0].sum(-1).detach(), found[1].detach()
    return found.sum(-1).detach()


def within_share_of_largest(ours: torch.Tensor, reference: torch.Tensor, share: float) -> None:
    largest = reference.abs().max().item()
    assert (ours - reference).abs().max().item() <= share * largest, (ours, reference)


# --- parity with captum -------------------------------------------------------------------


def test_integrated_gradients_match_captum(representative_pair, random_tokens):
    model, hf_model = representative_pair
    tokens = random_tokens(2, 8)
    ours = attribute_tokens(model, tokens, correct=CORRECT, incorrect=INCORRECT, steps=64, baseline="pad")
    pad = torch.full_like(tokens, model.tokenizer.pad_token_id)
    reference, delta = captum_ig(hf_model, tokens, pad, 64, "gausslegendre", delta=True)
    within_share_of_largest(ours.values, reference, 0.01)
    # The completeness gap is the quadrature error of the path, the same in both libraries
    # (captum's convergence delta). It is not small on every family at 64 steps: on the tiny
    # Gemma 2 (embeddings times sqrt(d_model), soft-capped attention and logits) the logit
    # difference swings by ~9 within 20% of the path; 2% at 64 steps, 1e-6 at 256.
    gap = ours.completeness.total - ours.completeness.change
    assert (gap - delta).abs().max().item() <= 0.01 * ours.completeness.change.abs().max().item()


@pytest.mark.parametrize("rule", ["riemann_trapezoid", "riemann_left", "riemann_middle", "riemann_right"])
def test_riemann_rules_match_captum(tiny_llama_pair, random_tokens, rule):
    model, hf_model = tiny_llama_pair
    tokens = random_tokens(1, 8)
    baseline = torch.full_like(tokens, 9)
    ours = attribute_tokens(
        model, tokens, correct=CORRECT, incorrect=INCORRECT, steps=16, rule=rule, baseline=baseline
    )
    reference = captum_ig(hf_model, tokens, baseline, 16, rule)
    if rule == "riemann_trapezoid":  # captum's trapezoid weights sum to 1 - 1/steps, ours to 1
        reference = reference * 16 / 15
    within_share_of_largest(ours.values, reference, 0.01)


def test_gradient_x_input_and_saliency_match_captum(representative_pair, random_tokens):
    model, hf_model = representative_pair
    tokens = random_tokens(2, 8)
    with torch.no_grad():
        inputs = hf_model.get_input_embeddings()(tokens)
    forward = hf_logit_diff(hf_model)
    gxi = captum_attr.InputXGradient(forward).attribute(inputs.clone().requires_grad_()).sum(-1)
    grads = captum_attr.Saliency(forward).attribute(inputs.clone().requires_grad_(), abs=True)
    ours = attribute_tokens(model, tokens, correct=CORRECT, incorrect=INCORRECT, method="gradient_x_input")
    torch.testing.assert_close(ours.values, gxi.detach(), atol=1e-4, rtol=0)
    saliency = attribute_tokens(model, tokens, correct=CORRECT, incorrect=INCORRECT, method="saliency")
    torch.testing.assert_close(saliency.values, grads.norm(dim=-1), atol=1e-4, rtol=1e-4)


def test_layer_integrated_gradients_match_captum_layer_ig(tiny_llama, random_tokens):
    """At a residual hook, captum's LayerIntegratedGradients on the same HookPoint module."""
    model = tiny_llama
    tokens, baseline = random_tokens(1, 8), torch.full((1, 8), 9)

    def forward(token_ids):
        logits = model(token_ids)[:, -1]
        return logits[:, CORRECT] - logits[:, INCORRECT]

    layer_ig = captum_attr.LayerIntegratedGradients(forward, model.blocks[1].hook_resid_pre)
    reference = layer_ig.attribute(tokens, baselines=baseline, n_steps=16).sum(-1).detach()
    ours = attribute_tokens(
        model,
        tokens,
        correct=CORRECT,
        incorrect=INCORRECT,
        steps=16,
        baseline=baseline,
        layer="blocks.1.hook_resid_pre",
    )
    within_share_of_largest(ours.values, reference, 0.01)


# --- literal references -------------------------------------------------------------------


@torch.no_grad()
def test_occlusion_equals_one_forward_per_replaced_token(representative_pair, random_tokens):
    model, _ = representative_pair
    tokens = random_tokens(2, 7)

    def diff(token_ids):
        logits = model(token_ids)[:, -1]
        return logits[:, CORRECT] - logits[:, INCORRECT]

    clean = diff(tokens)
    expected = torch.zeros(tokens.shape)
    for pos in range(tokens.shape[1]):
        occluded = tokens.clone()
        occluded[:, pos] = 11
        expected[:, pos] = clean - diff(occluded)
    ours = attribute_tokens(
        model, tokens, correct=CORRECT, incorrect=INCORRECT, method="occlusion", baseline=11, max_batch_rows=5
    )
    torch.testing.assert_close(ours.values, expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_head_occlusion_equals_zeroing_one_head_at_one_position(tiny_llama, random_tokens):
    model = tiny_llama
    tokens = random_tokens(1, 6)
    site = "blocks.0.attn.hook_z"

    def diff(hooks=()):
        with model.hooks(fwd_hooks=list(hooks)):
            logits = model(tokens)[:, -1]
        return (logits[:, CORRECT] - logits[:, INCORRECT])[0]

    clean = diff()
    ours = attribute_tokens(
        model, tokens, correct=CORRECT, incorrect=INCORRECT, method="occlusion", baseline="zero", layer=site
    )
    assert ours.values.shape == (1, 6, model.cfg.n_heads) and ours.axes == ("batch", "pos", "head")
    for pos, head in [(0, 0), (3, 2), (5, 3)]:

        def zero(z, hook, pos=pos, head=head):
            z[:, pos, head] = 0
            return z

        assert abs(ours.values[0, pos, head].item() - (clean - diff([(site, zero)])).item()) <= 1e-4


@torch.no_grad()
def test_attention_rollout_equals_hf_attentions_multiplied(representative_pair, random_tokens, request):
    model, _ = representative_pair
    # A fresh HF model with the same (seeded) weights: the session's one may have been wrapped
    # in place by TransformerBridge.boot_transformers (tests/test_parity.py), whose attention
    # modules return no weights, so output_attentions gives an empty tuple.
    family, n_kv_heads = request.node.callspec.params["representative_pair"]
    hf_model, _ = tiny_hf_model(family, n_kv_heads=n_kv_heads)
    tokens = random_tokens(2, 7)
    output = hf_model(tokens, output_attentions=True)
    assert_close_to_scale(model(tokens), output.logits, 5e-5)  # the same weights as ours
    attentions = output.attentions  # per layer [batch, head, q, k]
    assert len(attentions) == model.cfg.n_layers
    expected = []
    for example in range(2):
        rollout = torch.eye(7, dtype=torch.float64)
        for layer in attentions:
            mixed = 0.5 * layer[example].double().mean(0) + 0.5 * torch.eye(7, dtype=torch.float64)
            rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
        expected.append(rollout[-1])
    ours = attribute_tokens(model, tokens, method="attention_rollout")
    torch.testing.assert_close(ours.values, torch.stack(expected).float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.values.sum(-1), torch.ones(2))


def test_continuation_scores_the_summed_log_probabilities(tiny_llama):
    model = tiny_llama
    prompt, continuation, other = "abc de", "fgh", "xy"
    a = attribute_tokens(
        model, prompt, correct=continuation, incorrect=other, target="continuation", steps=32
    )

    def log_prob(text):
        tokens = model.to_tokens(prompt + text)
        n = len(text)
        log_probs = model(tokens)[0, -n - 1 : -1].log_softmax(-1)
        return log_probs.gather(-1, tokens[0, -n:, None]).sum().item()

    assert abs(a.score.item() - (log_prob(continuation) - log_prob(other))) <= 1e-4
    assert a.completeness.max_gap <= 0.01
    assert a.values.shape == model.to_tokens(prompt).shape


# --- invariants ----------------------------------------------------------------------------


def test_left_padded_batch_equals_unpadded_runs(tiny_llama):
    model = tiny_llama
    prompts = ["hello wor", "ab c"]
    batch = attribute_tokens(model, prompts, correct="l", incorrect="x", steps=16)
    for example, prompt in enumerate(prompts):
        alone = attribute_tokens(model, prompt, correct="l", incorrect="x", steps=16)
        n = alone.values.shape[1]
        torch.testing.assert_close(batch.values[example, -n:], alone.values[0], atol=1e-4, rtol=1e-4)
        assert batch.values[example, :-n].abs().max().item() == 0 if n < batch.values.shape[1] else True
        assert batch.tokens[example][-n:] == alone.tokens[0]


def test_right_padded_tokens_read_the_last_real_token(tiny_llama, random_tokens):
    model = tiny_llama
    tokens = random_tokens(1, 6)
    padded = torch.cat([tokens, torch.zeros(1, 2, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 2)], 1).long()
    alone = attribute_tokens(model, tokens, correct=3, method="gradient_x_input")
    ours = attribute_tokens(model, padded, attention_mask=mask, correct=3, method="gradient_x_input")
    torch.testing.assert_close(ours.values[:, :6], alone.values, atol=1e-5, rtol=1e-5)
    assert ours.values[:, 6:].abs().max() == 0


def test_chunking_does_not_change_the_values(tiny_llama, random_tokens):
    tokens = random_tokens(2, 6)
    whole = attribute_tokens(tiny_llama, tokens, correct=CORRECT, steps=8, max_batch_rows=64)
    chunked = attribute_tokens(tiny_llama, tokens, correct=CORRECT, steps=8, max_batch_rows=3)
    torch.testing.assert_close(whole.values, chunked.values, atol=1e-5, rtol=1e-5)


def test_prompt_pairs_integrate_from_the_corrupt_prompt(tiny_llama, random_tokens):
    model = tiny_llama
    clean = random_tokens(2, 6)
    corrupt = clean.clone()
    corrupt[:, 2] = 40
    pairs = PromptPairs(
        clean=clean,
        corrupt=corrupt,
        correct=torch.tensor([5, 6]),
        incorrect=torch.tensor([7, 8]),
        positions=torch.tensor([5, 5]),
    )
    a = attribute_tokens(model, pairs, steps=32)
    assert a.metadata["baseline"] == "corrupt prompt"
    assert a.completeness.max_gap <= 0.01
    untouched = [0, 1, 3, 4, 5]  # only position 2 differs, so only it moves along the path
    assert a.values[:, untouched].abs().max() == 0
    # the contrastive path explains the difference between the two runs
    with torch.no_grad():
        logits = [model(t)[torch.arange(2), 5] for t in (clean, corrupt)]
    change = [lg[torch.arange(2), pairs.correct] - lg[torch.arange(2), pairs.incorrect] for lg in logits]
    torch.testing.assert_close(a.completeness.change, change[0] - change[1], atol=1e-4, rtol=1e-4)


def test_integration_points_are_quadrature_rules():
    for rule in ("gauss_legendre", "riemann_middle", "riemann_trapezoid"):
        alphas, weights = integration_points(rule, 7)
        assert abs(float(weights.sum()) - 1) < 1e-12
        assert abs(float((weights * alphas**2).sum()) - 1 / 3) < (1e-12 if rule == "gauss_legendre" else 0.01)


# --- bad input ----------------------------------------------------------------------------


def test_bad_input_gets_specific_errors(tiny_llama, random_tokens):
    model = tiny_llama
    tokens = random_tokens(1, 6)
    with pytest.raises(ValueError, match="baseline has 4 positions but the input has 6"):
        attribute_tokens(model, tokens, correct=5, baseline=random_tokens(1, 4))
    with pytest.raises(
        ValueError, match="baseline prompts have \\[3, 4\\] tokens but the input has \\[4, 3\\]"
    ):
        attribute_tokens(model, ["abc", "de"], correct="d", baseline=["ab", "def"])
    with pytest.raises(ValueError, match="'ab' is 2 tokens .* target='continuation'"):
        attribute_tokens(model, "xyz", correct="ab")
    with pytest.raises(ValueError, match="multi-token answer is a continuation"):
        attribute_tokens(model, tokens, correct=torch.tensor([[5, 6]]))
    for steps in (0, -3):
        with pytest.raises(ValueError, match=f"steps must be an integer >= 1.*got {steps}"):
            attribute_tokens(model, tokens, correct=5, steps=steps)
    with pytest.raises(ValueError, match="steps= only applies to integrated_gradients"):
        attribute_tokens(model, tokens, correct=5, method="occlusion", steps=8)
    with pytest.raises(ValueError, match="patterns are \\[batch, head, q_pos, k_pos\\]"):
        attribute_tokens(model, tokens, correct=5, layer="blocks.0.attn.hook_pattern")
    with pytest.raises(ValueError, match="unknown hook name"):
        attribute_tokens(model, tokens, correct=5, layer="blocks.0.hook_resid_pree")
    with pytest.raises(ValueError, match="pad on the left"):
        attribute_tokens(
            model,
            tokens,
            attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]]),
            correct="ab",
            target="continuation",
        )


def test_zero_baseline_warns_on_rmsnorm_models_only(representative_pair, random_tokens):
    model, _ = representative_pair
    tokens = random_tokens(1, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attribute_tokens(model, tokens, correct=5, baseline="zero", steps=4)
    warned = any(issubclass(w.category, ZeroBaselineWarning) for w in caught)
    assert warned == (model.architecture.norm == "rmsnorm")


# --- the result object ---------------------------------------------------------------------


def test_result_round_trips_and_draws(tiny_llama, tmp_path):
    a = attribute_tokens(tiny_llama, ["hello wor", "ab"], correct="l", incorrect="x", steps=8)
    a.save(tmp_path / "ig")
    b = TokenAttribution.load(tmp_path / "ig")
    torch.testing.assert_close(b.values, a.values)
    torch.testing.assert_close(b.completeness.gap, a.completeness.gap)
    assert b.tokens == a.tokens and b.metadata == a.metadata
    frame = a.to_dataframe()
    assert len(frame) == int(a.attention_mask.sum())  # real tokens only
    assert frame.groupby("example")["value"].sum().tolist() == pytest.approx(
        a.values.sum(1).tolist(), abs=1e-5
    )
    figure = a.figure()
    assert figure.data[0].type == "heatmap" and len(figure.data[0].z) == 2

    comparison = compare_methods(tiny_llama, "hello wor", correct="l", steps=8)
    assert set(comparison.attributions) == {
        "integrated_gradients",
        "gradient_x_input",
        "occlusion",
        "attention_rollout",
    }
    agreement = comparison.agreement()
    assert agreement.shape == (4, 4) and (agreement.values.diagonal() > 0.999).all()
    assert len(comparison.figure().data[0].z) == 4


# --- the real model -----------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_integrated_gradients_match_captum(smollm2):
    """Attributions and the completeness gap (captum's convergence delta) agree with captum.
    On SmolLM2 the straight path from the pad-token embeddings is rough (the logit difference
    swings by several units within 5% of the path), so neither library's sum is close to
    ``f(x) - f(baseline)`` at a few dozen steps; they must agree with each other."""
    model, hf_model = smollm2
    prompt = "The Eiffel Tower is in the city of"
    paris, london = model.to_single_token(" Paris"), model.to_single_token(" London")
    ours = attribute_tokens(model, prompt, correct=paris, incorrect=london, steps=16)
    tokens = model.to_tokens(prompt)
    embed = hf_model.get_input_embeddings()
    with torch.no_grad():
        inputs, baselines = embed(tokens), embed(torch.full_like(tokens, model.tokenizer.pad_token_id))

    def forward(embeds):
        logits = hf_model(inputs_embeds=embeds).logits[:, -1]
        return logits[:, paris] - logits[:, london]

    reference, delta = captum_attr.IntegratedGradients(forward).attribute(
        inputs, baselines=baselines, n_steps=16, internal_batch_size=32, return_convergence_delta=True
    )
    within_share_of_largest(ours.values, reference.sum(-1).detach(), 0.01)
    gap = (ours.completeness.total - ours.completeness.change).item()
    assert abs(gap - delta.item()) <= 0.01 * abs(ours.completeness.change.item())


def test_cli_config_names_the_library_choices():
    import typing

    from mechinterp.cli.config import ConfigError, IntegrationRule, TokenMethod, validate
    from mechinterp.token_attribution import METHODS, RULES

    assert typing.get_args(TokenMethod) == METHODS and typing.get_args(IntegrationRule) == RULES
    step = {"kind": "token_attribution", "prompts": ["a b"], "baseline": "corrupt", "correct": [" c"]}
    with pytest.raises(ConfigError, match="baseline 'corrupt' needs the run's prompt pairs"):
        validate({"steps": [step]})
    with pytest.raises(ConfigError, match="prompts need correct"):
        validate({"steps": [{"kind": "token_attribution", "prompts": ["a b"]}]})


@pytest.mark.parametrize(
    "options",
    [
        {"method": "integrated_gradients", "steps": 4},
        {"method": "integrated_gradients", "steps": 4, "rule": "riemann_trapezoid", "baseline": "zero"},
        {"method": "gradient_x_input"},
        {"method": "saliency", "layer": "blocks.1.attn.hook_z"},
        {"method": "occlusion", "layer": "blocks.0.hook_resid_post"},
        {"method": "attention_rollout", "correct": None},
        {
            "method": "integrated_gradients",
            "steps": 4,
            "target": "continuation",
            "correct": "ab",
            "incorrect": "c",
        },
    ],
    ids=["ig", "ig-zero-trapezoid", "gxi", "saliency-heads", "occlusion-resid", "rollout", "ig-continuation"],
)
def test_no_tensor_is_created_on_the_default_device(tiny_llama, options):
    """As in tests/test_devices.py: with ``meta`` as the default device, a tensor created
    without ``device=`` would meet the model's CPU tensors and fail."""
    from tests.test_devices import DefaultDeviceMeta

    options = {"correct": "l", **options}
    tokens, mask = tiny_llama.encode(["hello wor", "ab"], padding_side="left")  # encode is not under test
    with DefaultDeviceMeta(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ZeroBaselineWarning)
        a = attribute_tokens(tiny_llama, tokens, attention_mask=mask, **options)
    assert a.values.device.type == "cpu" and torch.isfinite(a.values).all()
