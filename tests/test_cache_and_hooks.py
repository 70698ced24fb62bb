"""Caching, hooks and TransformerLens' ActivationCache helpers on native models."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import head_detector
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_protocol import TransformerLensModelWithWeights


def test_satisfies_tl_protocol(tiny_llama):
    assert isinstance(tiny_llama, TransformerLensModelWithWeights)


@torch.no_grad()
def test_run_with_cache_options(tiny_llama, random_tokens):
    tokens = random_tokens()
    logits, cache = tiny_llama.run_with_cache(tokens)
    assert isinstance(cache, ActivationCache)
    torch.testing.assert_close(logits, tiny_llama(tokens))
    _, filtered = tiny_llama.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"])
    assert list(filtered.keys()) == ["blocks.0.hook_resid_post"]
    _, by_predicate = tiny_llama.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_z"))
    assert sorted(by_predicate.keys()) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    _, sliced = tiny_llama.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post", pos_slice=-1)
    torch.testing.assert_close(sliced["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"][:, -1:])
    _, moved = tiny_llama.run_with_cache(tokens, names_filter="hook_embed", device="meta")
    assert moved["hook_embed"].device.type == "meta"


@torch.no_grad()
def test_hook_shapes(tiny_llama, random_tokens):
    _, cache = tiny_llama.run_with_cache(random_tokens(2, 7))
    expected = {
        "hook_embed": (2, 7, 64),
        "blocks.0.attn.hook_q": (2, 7, 4, 16),
        "blocks.0.attn.hook_k": (2, 7, 2, 16),  # grouped: kv_head axis
        "blocks.0.attn.hook_v": (2, 7, 2, 16),
        "blocks.0.attn.hook_rot_q": (2, 7, 4, 16),
        "blocks.0.attn.hook_attn_scores": (2, 4, 7, 7),
        "blocks.0.attn.hook_pattern": (2, 4, 7, 7),
        "blocks.0.attn.hook_z": (2, 7, 4, 16),
        "blocks.0.ln1.hook_scale": (2, 7, 1),
        "blocks.0.mlp.hook_pre": (2, 7, 128),
        "blocks.0.mlp.hook_pre_linear": (2, 7, 128),
        "blocks.0.mlp.hook_post": (2, 7, 128),
        "ln_final.hook_scale": (2, 7, 1),
    }
    assert {name: tuple(cache[name].shape) for name in expected} == expected
    assert "blocks.0.attn.hook_result" not in cache  # opt-in


@torch.no_grad()
def test_attn_result_and_split_inputs_are_exact_opt_ins(tiny_pair, random_tokens):
    model, _ = tiny_pair
    tokens = random_tokens()
    reference, cache = model.run_with_cache(tokens)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    try:
        logits, opted = model.run_with_cache(tokens)
    finally:
        model.set_use_attn_result(False)
        model.set_use_split_qkv_input(False)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)  # summation order differs
    heads, kv = model.cfg.n_heads, model.architecture.kv_heads
    assert opted["blocks.0.attn.hook_result"].shape == (3, 20, heads, 64)
    assert opted["blocks.1.hook_k_input"].shape == (3, 20, kv, 64)
    summed = opted["blocks.0.attn.hook_result"].sum(2) + model.blocks[0].attn.b_O
    torch.testing.assert_close(summed, cache["blocks.0.hook_attn_out"], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_one_heads_query_input_can_be_patched_alone(tiny_llama, random_tokens):
    tokens = random_tokens()
    _, clean = tiny_llama.run_with_cache(tokens)

    def zero_head_2(value, hook):
        value[:, :, 2] = 0
        return value

    tiny_llama.set_use_split_qkv_input(True)
    try:
        with tiny_llama.hooks(fwd_hooks=[("blocks.1.hook_q_input", zero_head_2)]):
            _, patched = tiny_llama.run_with_cache(tokens, names_filter="blocks.1.attn.hook_q")
    finally:
        tiny_llama.set_use_split_qkv_input(False)
    q_clean, q_patched = clean["blocks.1.attn.hook_q"], patched["blocks.1.attn.hook_q"]
    changed = (q_clean - q_patched).abs().amax(dim=(0, 1, 3)) > 1e-6
    assert changed.tolist() == [False, False, True, False]


@torch.no_grad()
def test_hooks_edit_activations_and_never_leak(tiny_llama, random_tokens):
    tokens = random_tokens()
    clean = tiny_llama(tokens)

    def zero_attn(value, hook):
        return torch.zeros_like(value)

    edited = tiny_llama.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", zero_attn)])
    assert not torch.allclose(edited, clean)
    with (
        pytest.raises(RuntimeError, match="boom"),
        tiny_llama.hooks(fwd_hooks=[("blocks.0.hook_attn_out", zero_attn)]),
    ):
        raise RuntimeError("boom")
    assert all(not hp._forward_hooks for hp in tiny_llama.hook_dict.values())
    torch.testing.assert_close(tiny_llama(tokens), clean)


@torch.no_grad()
def test_decompose_resid_sums_to_final_residual(representative_pair, random_tokens):
    model, _ = representative_pair
    _, cache = model.run_with_cache(random_tokens())
    parts = cache.decompose_resid()
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(parts.sum(0), final, atol=1e-4, rtol=0)


@torch.no_grad()
def test_accumulated_resid_and_head_results(representative_pair, random_tokens):
    model, _ = representative_pair
    _, cache = model.run_with_cache(random_tokens())
    n = model.cfg.n_layers
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == [*(f"{i}_pre" for i in range(n)), "final_post"]
    torch.testing.assert_close(stack[1], cache["blocks.1.hook_resid_pre"])
    heads = cache.stack_head_results(layer=1)  # [head (layer 0), batch, pos, d_model]
    attn_out = heads.sum(0) + model.blocks[0].attn.b_O
    post_norm = model.blocks[0].ln1_post  # TL's head results are z @ W_O, before a post-norm
    if post_norm is not None:
        attn_out = attn_out * post_norm.w / cache["blocks.0.ln1_post.hook_scale"]
    torch.testing.assert_close(attn_out, cache["blocks.0.hook_attn_out"], atol=1e-4, rtol=0)


@torch.no_grad()
def test_logit_attrs_match_direct_computation(tiny_llama, random_tokens):
    tokens = random_tokens()
    logits, cache = tiny_llama.run_with_cache(tokens)
    components = cache.decompose_resid(pos_slice=-1)  # [component, batch, d_model]
    right, wrong = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
    attrs = cache.logit_attrs(components, tokens=right, incorrect_tokens=wrong, pos_slice=-1)
    scale = cache["ln_final.hook_scale"][:, -1]
    direction = tiny_llama.tokens_to_residual_directions(right) - tiny_llama.tokens_to_residual_directions(
        wrong
    )
    direct = ((components / scale) * direction).sum(-1)
    torch.testing.assert_close(attrs, direct, atol=1e-4, rtol=1e-4)
    # TL's logit_attrs assumes the final norm's weight is folded into W_U; with it folded in
    # by hand (RMSNorm is linear given the cached scale, b_U is zero) the parts sum to the
    # true logit difference.
    folded = direction * tiny_llama.ln_final.w
    true_diff = logits[torch.arange(3), -1, right] - logits[torch.arange(3), -1, wrong]
    torch.testing.assert_close(((components / scale) * folded).sum(-1).sum(0), true_diff, atol=1e-4, rtol=0)


@torch.no_grad()
def test_head_detector_runs_on_native_model(tiny_llama):
    scores = head_detector.detect_head(tiny_llama, "abcdefgh abcdefgh", "previous_token_head")
    assert scores.shape == (2, 4)
    assert bool(((scores >= -1) & (scores <= 1)).all())


def test_per_head_hooks_are_restored_after_the_block_and_after_an_error(tiny_llama, random_tokens):
    tokens = random_tokens()
    with tiny_llama.per_head_hooks(results=True, split_inputs=True):
        _, cache = tiny_llama.run_with_cache(tokens)
    assert "blocks.0.attn.hook_result" in cache and "blocks.0.hook_q_input" in cache
    with pytest.raises(RuntimeError, match="boom"), tiny_llama.per_head_hooks(split_inputs=True):
        raise RuntimeError("boom")
    _, cache = tiny_llama.run_with_cache(tokens)
    assert "blocks.0.attn.hook_result" not in cache and "blocks.0.hook_q_input" not in cache
