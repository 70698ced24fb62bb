"""The toy induction model: deterministic training, caching, induction without a positional
shortcut, and the induction prompt pairs."""

from __future__ import annotations

import pytest
import torch

from mechinterp.data.induction import induction_pairs
from mechinterp.lens.heads import head_scores, induction_scores
from mechinterp.models.toy import (
    InductionTraining,
    load_induction_model,
    repeated_block_batch,
    train_induction_model,
)


def test_training_is_deterministic():
    first, second = train_induction_model(steps=5), train_induction_model(steps=5)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other_seed = train_induction_model(steps=5, seed=1)
    assert not torch.equal(first.embed.W_E, other_seed.embed.W_E)


def test_cache_is_keyed_by_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHINTERP_CACHE", str(tmp_path))
    settings = InductionTraining(steps=3)
    trained = load_induction_model(settings)
    assert (tmp_path / "toy-induction-2l" / settings.key() / "model.safetensors").is_file()
    cached = load_induction_model(settings)
    assert all(
        torch.equal(a, b)
        for a, b in zip(trained.state_dict().values(), cached.state_dict().values(), strict=True)
    )
    assert InductionTraining(steps=4).key() != settings.key()


def test_cache_written_before_the_grouped_rename_loads(tmp_path, monkeypatch):
    """Older caches store ``attn.W_K`` etc. for what is now ``attn.W_K_grouped``."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("MECHINTERP_CACHE", str(tmp_path))
    settings = InductionTraining(steps=2)
    trained = load_induction_model(settings)
    path = tmp_path / "toy-induction-2l" / settings.key() / "model.safetensors"
    legacy = {name.removesuffix("_grouped"): tensor for name, tensor in load_file(path).items()}
    assert "blocks.0.attn.W_K" in legacy
    save_file(legacy, path)
    cached = load_induction_model(settings)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(cached.state_dict()[name], tensor), name


def test_attention_only_structure(induction_model):
    assert induction_model.architecture.attn_only and induction_model.tokenizer is None
    assert not any("mlp" in name or "resid_mid" in name for name in induction_model.hook_dict)
    assert not hasattr(induction_model, "W_in")
    tokens = torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    _, cache = induction_model.run_with_cache(tokens)
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "1_attn_out"]
    torch.testing.assert_close(parts.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no tokenizer"):
        induction_model("some text")


def test_predicts_repeated_tokens_at_varied_distances(induction_model):
    pairs = induction_pairs(induction_model, 64, seed=1)
    with torch.no_grad():
        predicted = induction_model(pairs.clean)[:, -1].argmax(-1)
    correct = predicted == pairs.correct
    # distance from the last token back to its first occurrence varies from prompt to prompt
    answer_position = (pairs.clean == pairs.correct[:, None]).int().argmax(1)
    distance = pairs.positions - answer_position + 1
    assert distance.unique().numel() > 10
    near, far = distance <= distance.median(), distance > distance.median()
    assert correct[near].float().mean() > 0.9 and correct[far].float().mean() > 0.9
    # every second-copy position of held-out training-style sequences (chance: 1/127; tokens
    # may recur in the noise, which makes some of them ambiguous)
    tokens, predictable = repeated_block_batch(
        InductionTraining(batch_size=128), torch.Generator().manual_seed(12345)
    )
    with torch.no_grad():
        hits = induction_model(tokens)[:, :-1].argmax(-1) == tokens[:, 1:]
    assert hits[predictable[:, :-1]].float().mean() > 0.85


def test_previous_token_and_induction_heads(induction_model):
    pairs = induction_pairs(induction_model, 32, seed=2)
    previous = head_scores(induction_model, pairs.clean, "previous_token")[0]
    induction = induction_scores(induction_model, seq_len=20)[1]
    assert previous.max() > 0.5 and induction.max() > 0.5
    # the induction head's attention at the last position goes to the token after the first
    # occurrence, wherever that is
    head = int(induction.argmax())
    _, cache = induction_model.run_with_cache(pairs.clean, names_filter="blocks.1.attn.hook_pattern")
    last = cache["blocks.1.attn.hook_pattern"][:, head, -1]  # [batch, k_pos]
    answer_position = (pairs.clean == pairs.correct[:, None]).int().argmax(1)
    assert last[torch.arange(len(pairs)), answer_position].mean() > 0.5


def test_induction_pairs_invariants(induction_model):
    pairs = induction_pairs(induction_model, 16, seed=3, n_pos=30, block_len=6)
    assert pairs.clean.shape == (16, 30) and pairs.attention_mask is None
    assert (pairs.positions == 29).all() and (pairs.clean[:, 0] == 0).all()
    assert torch.equal(pairs.clean, induction_pairs(induction_model, 16, seed=3, n_pos=30, block_len=6).clean)
    for clean, corrupt, correct, incorrect in zip(
        pairs.clean, pairs.corrupt, pairs.correct, pairs.incorrect, strict=True
    ):
        differs = (clean != corrupt).nonzero().flatten()
        assert len(differs) == 6 and differs.diff().eq(1).all()  # exactly the first copy
        k = int((clean[differs[0] :] == clean[-1]).int().argmax()) + 1  # the copied prefix length
        assert int(correct) == int(clean[differs[0] + k]) and int(incorrect) == int(corrupt[differs[0] + k])
        assert torch.equal(clean[-k:], clean[differs[0] : differs[0] + k])
        assert int(correct) not in corrupt.tolist()
        assert clean[1:].unique().numel() == 29 - k and corrupt[1:].unique().numel() == 29  # distinct tokens
    with pytest.raises(ValueError, match="distinct token ids"):
        induction_pairs(induction_model, 2, n_pos=120, block_len=20)


def test_attribution_and_attention_patterns_work_without_mlps_or_tokenizer(induction_model):
    from mechinterp.lens.heads import attention_patterns
    from mechinterp.patching import SweepSpec, attribution_patch

    pairs = induction_pairs(induction_model, 4)
    result = attribution_patch(
        induction_model, pairs.clean, pairs.corrupt, pairs.metric(), SweepSpec(kind="z", per_position=False)
    )
    assert result.values.shape == (2, 4, 4) and bool(result.values.isfinite().all())
    patterns = attention_patterns(induction_model, pairs.clean[0], [(1, 0)])
    assert patterns.str_tokens == [f"<id {t}>" for t in pairs.clean[0].tolist()]  # token ids label the axes
