"""TransformerLens' weight processing at load time, and TL's logit attribution on our model.

TL's DLA tools divide the residual stream by the cached final-norm scale and read it with
``W_U``: right only when the final norm's weight (and LayerNorm bias) sit in ``W_U`` / ``b_U``,
which ``load_model`` arranges by default.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens.tools.analysis.direct_logit_attribution import (
    direct_logit_attribution as tl_direct_logit_attribution,
)

import mechinterp
from mechinterp.models.tiny import tiny_hf_model


def _load(family: str, n_kv_heads: int | None = None, **options):
    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=n_kv_heads)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu", **options)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize(("family", "kv"), [("gpt2", None), ("llama", 2), ("gpt_neox", None)])
def test_folding_keeps_the_logits(family, kv, random_tokens):
    tokens = random_tokens(2, 12)
    raw = _load(family, kv, fold_final_norm=False)
    assert not torch.equal(raw.ln_final.w, torch.ones_like(raw.ln_final.w))  # something to fold
    expected = raw(tokens)
    default = _load(family, kv)
    assert torch.equal(default.ln_final.w, torch.ones_like(default.ln_final.w))
    _close(default(tokens), expected)
    folded = _load(family, kv, fold_ln=True)
    for block in folded.blocks:
        assert torch.equal(block.ln1.w, torch.ones_like(block.ln1.w))
    _close(folded(tokens), expected)
    if raw.architecture.norm == "layernorm":
        centred = _load(family, kv, fold_ln=True, center_writing_weights=True)
        assert centred.W_E.mean(-1).abs().max() < 1e-6
        _close(centred(tokens), expected)
    else:
        with pytest.raises(ValueError, match="needs LayerNorm"):
            _load(family, kv, center_writing_weights=True)


def test_center_unembed_keeps_the_probabilities(random_tokens):
    tokens = random_tokens(2, 12)
    raw = _load("gpt2")
    centred = _load("gpt2", center_unembed=True)
    assert centred.W_U.mean(-1).abs().max() < 1e-6
    shift = raw(tokens) - centred(tokens)  # one constant per position
    _close(shift, shift[..., :1].expand_as(shift))
    _close(centred(tokens).softmax(-1), raw(tokens).softmax(-1))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_tl_logit_attribution_sums_to_the_logit_difference(family):
    """LayerNorm (bias into b_U) and RMSNorm: TL's tools reconstruct the logit difference."""
    model = _load(family, 2 if family == "llama" else None)
    prompt, a, b = "hello wor", "l", "d"
    with model.per_head_hooks(results=True):
        logits, cache = model.run_with_cache(prompt)
    ia, ib = model.to_single_token(a), model.to_single_token(b)
    true = logits[0, -1, ia] - logits[0, -1, ib] - (model.b_U[ia] - model.b_U[ib])
    direction = model.tokens_to_residual_directions(a) - model.tokens_to_residual_directions(b)
    totals = {
        "tl_dla": tl_direct_logit_attribution(model, prompt, a, b).attribution.sum(),
        "logit_attrs": cache.logit_attrs(cache.decompose_resid(pos_slice=-1), a, b, pos_slice=-1).sum(),
        "decompose": (cache.decompose_resid(layer=-1, apply_ln=True, pos_slice=-1) @ direction).sum(),
        "full": (cache.get_full_resid_decomposition(apply_ln=True, pos_slice=-1) @ direction).sum(),
    }
    for name, total in totals.items():
        torch.testing.assert_close(total, true, rtol=1e-4, atol=1e-4 * true.abs().item(), msg=name)


@pytest.mark.slow
def test_smollm2_tl_logit_attribution_is_the_logit_difference(smollm2):
    model, _ = smollm2
    prompt = "The Eiffel Tower is in the city of"
    with model.per_head_hooks(results=True):
        logits, cache = model.run_with_cache(prompt)
    ia, ib = model.to_single_token(" Paris"), model.to_single_token(" London")
    true = (logits[0, -1, ia] - logits[0, -1, ib] - (model.b_U[ia] - model.b_U[ib])).item()
    assert true > 4  # " Paris" clearly preferred (4.43)
    direction = model.tokens_to_residual_directions(" Paris") - model.tokens_to_residual_directions(" London")
    stack = cache.decompose_resid(pos_slice=-1)
    totals = {
        "tl_dla": tl_direct_logit_attribution(
            model, prompt, " Paris", " London", cache=cache
        ).attribution.sum(),
        "logit_attrs": cache.logit_attrs(stack, " Paris", " London", pos_slice=-1).sum(),
        "apply_ln_to_stack": (cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) @ direction).sum(),
        "decompose": (cache.decompose_resid(layer=-1, apply_ln=True, pos_slice=-1) @ direction).sum(),
        "full": (
            cache.get_full_resid_decomposition(apply_ln=True, pos_slice=-1, expand_neurons=False) @ direction
        ).sum(),
    }
    for name, total in totals.items():
        assert abs(total.item() - true) < 1e-2, (name, total.item(), true)
