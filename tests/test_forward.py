"""Forward-pass semantics: layer skipping, padding, return types, generation."""

from __future__ import annotations

import pytest
import torch

from mechinterp.models.tiny import tiny_hf_model


@torch.no_grad()
def test_start_at_layer_does_not_run_earlier_blocks(tiny_pair, random_tokens):
    model, _ = tiny_pair
    tokens = random_tokens()
    n = model.cfg.n_layers
    resid = model(tokens, stop_at_layer=n - 1)
    ran = []
    handles = [
        block.register_forward_pre_hook(lambda mod, args, i=i: ran.append(i))
        for i, block in enumerate(model.blocks)
    ]
    try:
        logits = model(resid, start_at_layer=n - 1)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [n - 1]
    torch.testing.assert_close(logits, model(tokens), atol=1e-5, rtol=0)


@torch.no_grad()
def test_stop_at_layer_returns_resid_pre(tiny_llama, random_tokens):
    tokens = random_tokens()
    _, cache = tiny_llama.run_with_cache(tokens)
    torch.testing.assert_close(tiny_llama(tokens, stop_at_layer=1), cache["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(tiny_llama(tokens, stop_at_layer=-1), cache["blocks.1.hook_resid_pre"])


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_batch_equals_unpadded_runs(tiny_pair, side):
    model, _ = tiny_pair
    prompts = ["ab", "hello there, world", "x y z"]
    tokens, mask = model.encode(prompts, padding_side=side)
    batched = model(tokens, attention_mask=mask)
    for row, prompt in enumerate(prompts):
        alone = model(model.to_tokens(prompt))[0]
        real = mask[row].bool()
        torch.testing.assert_close(batched[row, real], alone, atol=1e-5, rtol=0)
    # strings in, padding handled for you
    torch.testing.assert_close(model(prompts, padding_side=side), batched)


@torch.no_grad()
def test_return_types(tiny_llama, random_tokens):
    tokens = random_tokens()
    logits, loss = tiny_llama(tokens, return_type="both")
    assert logits.shape == (3, 20, 98)
    assert loss.ndim == 0
    torch.testing.assert_close(tiny_llama(tokens, return_type="loss"), loss)
    assert tiny_llama(tokens, return_type=None) is None
    resid = tiny_llama(tokens, stop_at_layer=1)
    torch.testing.assert_close(tiny_llama(resid, start_at_layer=1, return_type="loss", tokens=tokens), loss)


@torch.no_grad()
def test_greedy_generation_matches_hf():
    hf_model, tokenizer = tiny_hf_model("gpt_neox")
    import mechinterp

    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    prompt = model.to_tokens("hello")
    ours = model.generate(prompt, max_new_tokens=6, stop_at_eos=False)
    theirs = hf_model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(ours, theirs)
    text = model.generate("hello", max_new_tokens=3, stop_at_eos=False)
    assert isinstance(text, str) and text.startswith("hello")


@torch.no_grad()
def test_sampling_is_reproducible_with_a_generator(tiny_llama):
    def sample():
        return tiny_llama.generate(
            "ab", max_new_tokens=5, do_sample=True, top_k=5, generator=torch.Generator().manual_seed(0)
        )

    assert sample() == sample()


@torch.no_grad()
def test_kv_prefix_computes_the_same_suffix(tiny_pair):
    from mechinterp.models.prefix import KeyValuePrefix

    model, _ = tiny_pair
    tokens, mask = model.encode(["hello there, world", "a b"], padding_side="left")
    full, cache = model.run_with_cache(
        tokens, attention_mask=mask, names_filter=KeyValuePrefix.hook_filter(model)
    )
    past = KeyValuePrefix.from_cache(cache, model, length=6)
    suffix = model(tokens[:, 6:], attention_mask=mask, past=past)
    torch.testing.assert_close(suffix, full[:, 6:], atol=1e-5, rtol=0)
    resid = model(tokens, attention_mask=mask, stop_at_layer=1)
    from_layer_1 = model(resid[:, 6:], start_at_layer=1, attention_mask=mask, past=past)
    torch.testing.assert_close(from_layer_1, full[:, 6:], atol=1e-5, rtol=0)
    picked = model(
        tokens[:, 6:],
        attention_mask=mask,
        past=past.select(torch.tensor([0, 1])),
        logit_positions=torch.tensor([[0, 3], [2, 2]]),
    )
    torch.testing.assert_close(picked[0], full[0, [6, 9]], atol=1e-5, rtol=0)
    torch.testing.assert_close(picked[1], full[1, [8, 8]], atol=1e-5, rtol=0)
