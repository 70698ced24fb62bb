"""TransformerLens API semantics of ``HookedLM`` that a switching user relies on."""

from __future__ import annotations

import pytest
import torch

from mechinterp.models.tiny import tiny_hf_model


@torch.no_grad()
def test_return_type_none_still_runs_the_final_norm(tiny_llama, random_tokens):
    tokens = random_tokens(2, 8)
    _, cache = tiny_llama.run_with_cache(tokens)
    output, quiet = tiny_llama.run_with_cache(tokens, return_type=None)
    assert output is None
    torch.testing.assert_close(quiet["ln_final.hook_scale"], cache["ln_final.hook_scale"])
    torch.testing.assert_close(
        quiet.decompose_resid(layer=-1, apply_ln=True), cache.decompose_resid(layer=-1, apply_ln=True)
    )


@torch.no_grad()
def test_start_at_layer_zero_takes_a_residual_stream(tiny_pair, random_tokens):
    model, _ = tiny_pair
    tokens = random_tokens(2, 8)
    resid = model(tokens, stop_at_layer=0)
    expected = model(tokens)
    for start in (0, -model.cfg.n_layers):
        torch.testing.assert_close(model(resid, start_at_layer=start), expected)
    with pytest.raises(ValueError, match="residual stream"):
        model(tokens, start_at_layer=1)


def test_to_str_tokens_of_a_list_is_one_list_per_prompt(tiny_llama):
    assert tiny_llama.to_str_tokens(["ab", "c"]) == [["<bos>", "a", "b"], ["<bos>", "c"]]
    assert tiny_llama.to_str_tokens(["ab"], prepend_bos=False) == [["a", "b"]]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@torch.no_grad()
def test_generation_with_the_kv_cache_gives_the_same_tokens(family):
    import mechinterp

    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=2 if family == "llama" else None)
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    prompts = ["a", "hello there", "xyz!"]  # left-padded into one batch
    cached = model.generate(prompts, max_new_tokens=10, stop_at_eos=False)
    assert cached == model.generate(prompts, max_new_tokens=10, stop_at_eos=False, use_past_kv_cache=False)
    tokens = model.to_tokens("hello")
    kwargs = {"max_new_tokens": 6, "do_sample": True, "top_k": 10, "stop_at_eos": False}
    sampled = [
        model.generate(tokens, use_past_kv_cache=use, generator=torch.Generator().manual_seed(3), **kwargs)
        for use in (True, False)
    ]
    assert torch.equal(*sampled)


@torch.no_grad()
def test_generation_hooks_see_each_new_position_and_edit_the_cache(tiny_llama):
    seen = []

    def halve_values(v, hook):
        seen.append(v.shape[1])
        return v * 0.5

    hooks = [("blocks.0.attn.hook_v", halve_values)]
    tokens = tiny_llama.to_tokens("hello")  # 6 tokens with BOS
    with tiny_llama.hooks(fwd_hooks=hooks):
        cached = tiny_llama.generate(tokens, max_new_tokens=5, stop_at_eos=False)
    assert seen == [6, 1, 1, 1, 1]
    with tiny_llama.hooks(fwd_hooks=hooks):
        full = tiny_llama.generate(tokens, max_new_tokens=5, stop_at_eos=False, use_past_kv_cache=False)
    assert torch.equal(cached, full)
    assert not torch.equal(cached, tiny_llama.generate(tokens, max_new_tokens=5, stop_at_eos=False))
