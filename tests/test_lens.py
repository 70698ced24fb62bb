"""Logit lens, direct logit attribution and head detection against direct computations."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import head_detector

from mechinterp.lens import (
    attention_patterns,
    detection_pattern,
    direct_logit_attribution,
    head_scores,
    induction_scores,
    logit_lens,
)
from mechinterp.plotting import attention_heatmap, dla_bar, dla_heatmap, lens_heatmap, lens_trajectory


@torch.no_grad()
def test_logit_lens_matches_materialised_logits(representative_pair):
    model, _ = representative_pair
    prompts = ["hello there", "abcdefgh"]
    lens = logit_lens(model, prompts, targets=["e", "x"], top_k=4, include_mid=True, vocab_chunk=30)
    tokens, mask = model.encode(prompts)
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    n = model.cfg.n_layers
    assert lens.layers == [*(f"{i}_{s}" for i in range(n) for s in ("pre", "mid")), "final"]
    final = model(tokens, attention_mask=mask).log_softmax(-1)
    targets = torch.tensor([model.to_single_token("e"), model.to_single_token("x")])
    for index, name in [(0, "blocks.0.hook_resid_pre"), (3, "blocks.1.hook_resid_mid")]:
        log_probs = model.unembed(model.ln_final(cache[name])).log_softmax(-1)
        top = log_probs.topk(4, dim=-1)
        assert torch.equal(lens.top_tokens[index], top.indices)
        torch.testing.assert_close(lens.top_probs[index], top.values.exp(), atol=1e-5, rtol=0)
        kl = (final.exp() * (final - log_probs)).sum(-1)
        torch.testing.assert_close(lens.kl_to_final[index], kl, atol=1e-4, rtol=0)
        target_lp = log_probs[torch.arange(2), :, targets]
        torch.testing.assert_close(lens.target_prob[index], target_lp.exp(), atol=1e-5, rtol=0)
        rank = (log_probs > target_lp[..., None]).sum(-1)
        assert torch.equal(lens.target_rank[index], rank)
    assert lens.kl_to_final[-1].abs().max() < 1e-4
    assert len(lens.top_strings(0, -1)["final"]) == 4


def test_dla_sums_to_the_logit_difference(representative_pair):
    model, _ = representative_pair
    prompts = ["hello there", "abc d"]
    for granularity in ("layer", "head", "neuron"):
        dla = direct_logit_attribution(
            model, prompts, correct=["a", "b"], incorrect=["c", "d"], granularity=granularity
        )
        torch.testing.assert_close(dla.total, dla.logit_diff, atol=1e-4, rtol=0)
    heads = direct_logit_attribution(model, prompts, correct=["a", "b"], incorrect=["c", "d"])
    layers = direct_logit_attribution(
        model, prompts, correct=["a", "b"], incorrect=["c", "d"], granularity="layer"
    )
    # per-head attributions of a layer sum to that layer's attention attribution
    torch.testing.assert_close(
        heads.by_head().sum(1),
        torch.stack([layers.values[layers.labels.index(f"L{i} attn")] for i in range(model.cfg.n_layers)]),
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(heads.by_layer()["mlp"], layers.by_layer()["mlp"], atol=1e-5, rtol=0)


def test_dla_direct_computation_for_one_head(tiny_llama):
    prompts = ["hello there"]
    dla = direct_logit_attribution(tiny_llama, prompts, correct=["a"], incorrect=["c"])
    _, cache = tiny_llama.run_with_cache(prompts)
    z = cache["blocks.1.attn.hook_z"][0, -1, 2]
    out = z @ tiny_llama.blocks[1].attn.W_O[2]
    scale = cache["ln_final.hook_scale"][0, -1]
    a, c = tiny_llama.to_single_token("a"), tiny_llama.to_single_token("c")
    direct = (out / scale * tiny_llama.ln_final.w) @ (tiny_llama.W_U[:, a] - tiny_llama.W_U[:, c])
    torch.testing.assert_close(dla.by_head()[1, 2, 0], direct, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["previous_token", "duplicate_token", "induction"])
@pytest.mark.parametrize("exclude", [False, True])
def test_head_scores_match_transformer_lens(representative_pair, kind, exclude):
    model, _ = representative_pair
    text = "abcabcabc xyz abc"
    ours = head_scores(model, model.to_tokens(text), kind, exclude_bos=exclude, exclude_current_token=exclude)
    theirs = head_detector.detect_head(
        model, text, f"{kind}_head", exclude_bos=exclude, exclude_current_token=exclude
    )
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=0)


def test_induction_detection_pattern_and_scores(tiny_llama):
    tokens = torch.tensor([[1, 5, 6, 7, 5, 6, 7]])
    pattern = detection_pattern(tokens, "induction")[0]
    assert pattern[4].nonzero().flatten().tolist() == [2]  # second "5" attends to the "6" after the first
    assert pattern[6].nonzero().flatten().tolist() == [4]  # second "7": the token after the first "7"
    scores = induction_scores(tiny_llama, seq_len=12, batch=3)
    assert scores.shape == (2, 4) and bool(((scores >= 0) & (scores <= 1)).all())
    with pytest.raises((ValueError, TypeError), match="copy"):
        detection_pattern(tokens, "copy")


def test_figures(tiny_llama):
    lens = logit_lens(tiny_llama, ["hello"], targets=["o"])
    assert lens_heatmap(lens, value="target_rank").data[0].customdata is not None
    assert len(lens_trajectory(lens).data) == 3
    with pytest.raises(ValueError, match="needs targets"):
        lens_heatmap(logit_lens(tiny_llama, ["hello"]), value="target_prob")
    dla = direct_logit_attribution(tiny_llama, ["hello"], correct=["a"], incorrect=["b"])
    assert dla_heatmap(dla).data[0].z.shape == (2, 4)
    assert len(dla_bar(dla).data) == 2
    patterns = attention_patterns(tiny_llama, "hello", [(0, 1), (1, 3)])
    assert patterns.patterns.shape == (2, 6, 6)
    assert len(attention_heatmap(patterns).data) == 2
    with pytest.raises(ValueError, match=r"head \(2, 0\) does not exist"):
        attention_patterns(tiny_llama, "hello", [(2, 0)])


@pytest.mark.slow
def test_smollm2_logit_lens_finds_paris_before_the_last_layer(smollm2):
    model, _ = smollm2
    lens = logit_lens(model, "The Eiffel Tower is located in the city of", targets=[" Paris"])
    ranks = lens.target_rank[:-1, 0, -1]  # every layer before the final residual stream
    assert bool((ranks < 5).any())


def test_tuned_lens_beats_the_logit_lens_on_held_out_text(tiny_llama, tmp_path):
    from mechinterp.lens import TunedLens, stdlib_corpus
    from mechinterp.models.tiny import tiny_hf_model

    corpus = stdlib_corpus(120)
    assert len(corpus) == 120 and all(len(text.split()) >= 12 for text in corpus)
    lens = TunedLens.train(
        tiny_llama, corpus[:100], steps=150, tokens_per_step=128, lr=3e-3, max_tokens=32, progress=False
    )
    kl = lens.evaluate(tiny_llama, corpus[100:], max_tokens=32)
    assert bool((kl["tuned"] < kl["logit"]).all()), kl
    lens.save(tmp_path / "lens")
    loaded = TunedLens.load(tmp_path / "lens", tiny_llama)
    torch.testing.assert_close(loaded.weight, lens.weight)
    hf_model, tokenizer = tiny_hf_model("llama", n_layers=3)
    import mechinterp

    other = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    with pytest.raises(
        ValueError, match=r"tuned lens for 'llama' \(2 layers, d_model 64\), not for 'llama' \(3 layers"
    ):
        TunedLens.load(tmp_path / "lens", other)
    with pytest.raises(ValueError, match="needs training texts"):
        TunedLens.train(tiny_llama, [])
