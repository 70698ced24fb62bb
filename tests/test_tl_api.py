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
def test_start_at_layer_zero_takes_a_residual_stream(representative_pair, random_tokens):
    model, _ = representative_pair
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


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])  # mistral: sliding window of 8
@torch.no_grad()
def test_generation_with_the_kv_cache_gives_the_same_tokens(family):
    import mechinterp

    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=None if family == "gpt2" else 2)
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


def test_a_switched_off_hook_added_by_name_raises(tiny_llama, random_tokens):
    tokens = random_tokens(1, 5)
    for name, switch in [
        ("blocks.1.attn.hook_result", "set_use_attn_result"),
        ("blocks.0.hook_k_input", "set_use_split_qkv_input"),
    ]:
        with pytest.raises(ValueError, match=f"switched off.*{switch}"):
            tiny_llama.add_hook(name, lambda x, hook: x)
        with pytest.raises(ValueError, match=switch), tiny_llama.hooks(fwd_hooks=[(name, lambda x, hook: x)]):
            pass
        with pytest.raises(ValueError, match=switch):
            tiny_llama.run_with_cache(tokens, names_filter=[name])
    # predicates keep working: they match what fires
    _, cache = tiny_llama.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_result"))
    assert len(cache) == 0
    with tiny_llama.per_head_hooks(results=True):
        fired = []
        with tiny_llama.hooks(fwd_hooks=[("blocks.1.attn.hook_result", lambda x, hook: fired.append(1))]):
            tiny_llama(tokens)
        assert fired == [1]
    tiny_llama.reset_hooks()


def test_cfg_writes_take_effect_or_raise(random_tokens):
    import mechinterp

    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    model.cfg.use_attn_result = True
    assert model.cfg.use_attn_result and model.blocks[1].attn.use_attn_result
    _, cache = model.run_with_cache(random_tokens(1, 5))
    assert "blocks.1.attn.hook_result" in cache
    model.cfg.use_split_qkv_input = True
    assert model.blocks[0].use_split_qkv_input
    model.cfg.default_prepend_bos = False
    assert model.to_str_tokens("ab") == ["a", "b"] and model.cfg.default_prepend_bos is False
    model.cfg.dtype = torch.float64
    assert model.W_E.dtype == torch.float64
    with pytest.raises(AttributeError, match="fixed by the architecture.*set_use_attn_result"):
        model.cfg.n_layers = 3
    with pytest.raises(AttributeError, match="no field 'use_atn_result'"):
        model.cfg.use_atn_result = True
    assert model.cfg.to_dict()["n_layers"] == 2 and "_model" not in model.cfg.to_dict()


@pytest.fixture(scope="module")
def attention_only():
    from mechinterp.models.toy import train_induction_model

    return train_induction_model(steps=2)  # weights do not matter here, only the shape


@torch.no_grad()
def test_attention_only_models_in_every_analysis(attention_only):
    from transformer_lens.tools.analysis.direct_logit_attribution import direct_logit_attribution as tl_dla

    from mechinterp.lens import direct_logit_attribution, logit_lens
    from mechinterp.metrics import LogitDifference
    from mechinterp.patching import SweepSpec, patch_sweep

    model = attention_only
    tokens = torch.randint(1, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    correct, wrong = torch.tensor([3, 4]), torch.tensor([5, 6])
    ours = direct_logit_attribution(model, tokens, correct=correct, incorrect=wrong)
    torch.testing.assert_close(ours.total, ours.logit_diff, rtol=1e-4, atol=1e-4)
    logits = model(tokens)[:, -1]
    true = logits[[0, 1], correct] - logits[[0, 1], wrong]
    theirs = tl_dla(model, tokens, correct, wrong).attribution.sum(0)
    torch.testing.assert_close(theirs, true, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="attention-only"):
        tl_dla(model, tokens, correct, wrong, unit="layer")
    assert logit_lens(model, tokens).str_tokens[0][1] == str(tokens[0, 1].item())
    with pytest.raises(ValueError, match="attention-only"):
        logit_lens(model, tokens, include_mid=True)
    metric = LogitDifference.last_position(torch.ones_like(tokens), correct=correct, incorrect=wrong)
    with pytest.raises(ValueError, match="attention-only"):
        patch_sweep(model, tokens, tokens.flip(0), SweepSpec(kind="mlp_out"), metric, progress=False)


def test_misspelt_sweep_kind_is_rejected_when_built():
    from mechinterp.patching import SweepSpec

    with pytest.raises(Exception, match="mlp_ot"):  # under the test suite's type checker: TypeCheckError
        SweepSpec(kind="mlp_ot")
    # without a runtime type checker (how users run) the dataclass's own check says what was meant
    spec = SweepSpec(kind="resid_pre")
    object.__setattr__(spec, "kind", "mlp_ot")
    with pytest.raises(ValueError, match="did you mean 'mlp_out'"):
        spec.__post_init__()
