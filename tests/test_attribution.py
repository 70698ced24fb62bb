"""Attribution patching (AtP, AtP*) against exact patching, and compare()."""

from __future__ import annotations

import pytest
import torch

import mechinterp
from mechinterp.metrics import LogitDifference
from mechinterp.models.tiny import tiny_hf_model
from mechinterp.patching import SweepSpec, attribution_patch, compare, patch_sweep, reference_patch_sweep
from mechinterp.plotting import comparison_scatter


def pair():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(3, 98, (2, 7), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 2] = 9
    metric = LogitDifference.last_position(
        torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8], reduce="none"
    )
    return clean, corrupt, metric


# Gemma 2 without its final soft-cap (not linear), with a milder attention soft-cap so the
# last layer's softmax can still saturate, and a window wide enough that the last query sees
# the corrupted tokens; Qwen3 (QK-norm per head); OLMo 2 (post-norms).
LINEAR_TAIL_FAMILIES = {
    "llama": {},
    "gemma2": {"final_logit_softcapping": None, "attn_logit_softcapping": 8.0, "sliding_window": 16},
    "qwen3": {},
    "olmo2": {},
}


@pytest.fixture(params=["llama", "gemma2", "qwen3", "olmo2"])
def linear_tail_model(request):
    """A tiny model whose last layer's MLP is removed and whose final norm scale (and the
    last attention's post-norm scale) is frozen by a hook: from the last layer's attention
    pattern to the logits everything is linear. Its last-layer attention is sharpened
    (scaled W_Q, or q_norm under QK-norm) so that the softmax saturates."""
    family = request.param
    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=2, **LINEAR_TAIL_FAMILIES[family])
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    last = model.blocks[1]
    with torch.no_grad():
        last.mlp.W_out.zero_()
        last.mlp.b_out.zero_()
        (last.attn.W_Q if last.attn.q_norm is None else last.attn.q_norm.w).mul_(4.0)
    _, corrupt, _ = pair()
    _, cache = model.run_with_cache(corrupt)
    frozen = ["ln_final.hook_scale"] + (["blocks.1.ln1_post.hook_scale"] if last.ln1_post is not None else [])
    return model, [(name, lambda value, hook, scale=cache[name]: scale.clone()) for name in frozen]


@pytest.mark.parametrize(
    "spec",
    [
        SweepSpec(kind="z", layers=(1,)),
        SweepSpec(kind="v", layers=(1,), per_position=False),
        SweepSpec(kind="resid_mid", layers=(1,)),
        SweepSpec(kind="resid_post", layers=(1,)),
        SweepSpec(kind="pattern", layers=(1,)),
    ],
    ids=["z", "v_all_pos", "resid_mid", "resid_post", "pattern"],
)
def test_atp_is_exact_where_the_model_is_linear(linear_tail_model, spec):
    model, freeze_norms = linear_tail_model
    clean, corrupt, metric = pair()
    with model.hooks(fwd_hooks=freeze_norms):
        exact = reference_patch_sweep(model, clean, corrupt, spec, metric)
        atp = attribution_patch(model, clean, corrupt, metric, spec)
    torch.testing.assert_close(atp.values, exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "spec",
    [
        SweepSpec(kind="q", layers=(1,)),
        SweepSpec(kind="k", layers=(1,)),
        SweepSpec(kind="k", layers=(1,), per_position=False),
    ],
    ids=["q", "k", "k_all"],
)
# not OLMo 2: its QK-norm spans all heads, so one head's q/k patch moves every head's
# queries/keys, which AtP*'s per-head QK fix does not model (it stays an estimate there)
@pytest.mark.parametrize("linear_tail_model", ["llama", "gemma2", "qwen3"], indirect=True)
def test_atp_star_fixes_saturated_attention(linear_tail_model, spec):
    model, freeze_norms = linear_tail_model
    clean, corrupt, metric = pair()
    with model.hooks(fwd_hooks=freeze_norms):
        exact = reference_patch_sweep(model, clean, corrupt, spec, metric)
        atp = attribution_patch(model, clean, corrupt, metric, spec)
        star = attribution_patch(model, clean, corrupt, metric, spec, method="atp*")
    assert (atp.values - exact).abs().max() > 0.1  # AtP is measurably wrong here
    torch.testing.assert_close(star.values, exact, atol=1e-5, rtol=1e-5)  # float32 rounding of a ~3 metric


def test_graddrop_equals_atp_magnitude_in_the_last_layer(tiny_llama):
    """Dropping the gradient through an earlier layer cannot change a last-layer estimate, and
    dropping its own layer zeroes it: 1/(L-1) * (L-1) * |AtP| = |AtP|."""
    clean, corrupt, metric = pair()
    spec = SweepSpec(kind="z", layers=(1,))
    atp = attribution_patch(tiny_llama, clean, corrupt, metric, spec)
    star = attribution_patch(tiny_llama, clean, corrupt, metric, spec, method="atp*")
    torch.testing.assert_close(star.values, atp.values, atol=1e-5, rtol=0)
    earlier = SweepSpec(kind="z", layers=(0,))
    plain = attribution_patch(tiny_llama, clean, corrupt, metric, earlier)
    dropped = attribution_patch(tiny_llama, clean, corrupt, metric, earlier, method="atp*")
    assert not torch.allclose(plain.values, dropped.values)
    no_drop = attribution_patch(tiny_llama, clean, corrupt, metric, earlier, method="atp*", grad_drop=False)
    torch.testing.assert_close(no_drop.values, plain.values)  # z sites: no QK fix either


def test_same_layout_as_exact_and_scalar_metrics(representative_pair):
    model, _ = representative_pair
    clean, corrupt, metric = pair()
    spec = SweepSpec(kind="z")
    exact = patch_sweep(model, clean, corrupt, spec, metric, progress=False)
    atp = attribution_patch(model, clean, corrupt, metric, spec)
    assert atp.axes == exact.axes and atp.labels == exact.labels and atp.values.shape == exact.values.shape
    torch.testing.assert_close(atp.base, exact.base)
    torch.testing.assert_close(atp.source, exact.source)

    def scalar(logits):
        return (logits[:, -1, 5] - logits[:, -1, 7]).mean()

    scalar_atp = attribution_patch(model, clean, corrupt, scalar, spec)
    assert scalar_atp.values.shape == exact.mean().shape
    per_example = LogitDifference(
        torch.tensor([6, 6]), torch.tensor([5, 5]), torch.tensor([7, 7]), reduce="none"
    )
    expected = attribution_patch(model, clean, corrupt, per_example, spec).mean()
    torch.testing.assert_close(scalar_atp.values, expected, atol=1e-5, rtol=1e-5)


def test_compare_statistics_and_scatter(tiny_llama):
    clean, corrupt, metric = pair()
    spec = SweepSpec(kind="z")
    exact = patch_sweep(tiny_llama, clean, corrupt, spec, metric, progress=False)
    same = compare(exact, exact)
    assert same.pearson == pytest.approx(1.0) and same.spearman == pytest.approx(1.0)
    assert same.top_k_overlap == 1.0 and same.disagreements["rank_gap"].max() == 0
    atp = attribution_patch(tiny_llama, clean, corrupt, metric, spec)
    comparison = compare(exact, atp, top_k=5)
    assert -1 <= comparison.spearman <= 1 and comparison.top_k == 5
    assert list(comparison.disagreements.columns)[:3] == ["cell", "exact", "estimate"]
    assert comparison.disagreements["cell"].iloc[0].startswith("L")
    figure = comparison_scatter(comparison)
    assert len(figure.data) == 2 and "Spearman" in figure.layout.title.text
    with pytest.raises(ValueError, match="maps differ"):
        compare(
            exact,
            patch_sweep(tiny_llama, clean, corrupt, SweepSpec(kind="resid_pre"), metric, progress=False),
        )


@pytest.mark.parametrize(
    "spec",
    [
        SweepSpec(kind="attn_out", layers=(1,)),
        SweepSpec(kind="mlp_out", layers=(1,)),
        SweepSpec(kind="mlp_post", layers=(1,), per_position=False),
        SweepSpec(kind="z", layers=(1,)),
        SweepSpec(kind="v", layers=(1,)),
        SweepSpec(kind="pattern", layers=(1,)),
        SweepSpec(kind="q", layers=(1,)),
        SweepSpec(kind="k", layers=(1,)),
    ],
    ids=lambda spec: spec.kind,
)
def test_graddrop_own_layer_term_is_exactly_zero(tiny_llama, spec):
    """For a node inside the last layer l, dropping layer 0 leaves its estimate unchanged, so
    GradDrop = (|AtP| + |AtP_l|) / (L-1) with L = 2 equals |AtP| exactly iff the own-layer
    term AtP_l is exactly zero."""
    assert tiny_llama.architecture.n_layers == 2
    clean, corrupt, metric = pair()
    undropped = attribution_patch(tiny_llama, clean, corrupt, metric, spec, method="atp*", grad_drop=False)
    star = attribution_patch(tiny_llama, clean, corrupt, metric, spec, method="atp*")
    assert (undropped.values - undropped.base).abs().max() > 1e-4  # not trivially zero
    torch.testing.assert_close(star.values, undropped.values, atol=0, rtol=0)


def test_graddrop_on_residual_sites_averages_over_all_layers(tiny_llama):
    """resid_post of the last layer lies after every dropped layer: each of the L GradDrop
    terms is |AtP|, so the score is |AtP| (dividing by L-1 would give 2|AtP|)."""
    clean, corrupt, metric = pair()
    spec = SweepSpec(kind="resid_post", layers=(1,))
    atp = attribution_patch(tiny_llama, clean, corrupt, metric, spec)
    star = attribution_patch(tiny_llama, clean, corrupt, metric, spec, method="atp*")
    assert (atp.values - atp.base).abs().max() > 1e-4
    torch.testing.assert_close(star.values, atp.values, atol=1e-6, rtol=0)
