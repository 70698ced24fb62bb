"""Native models against their references: HF logits and TransformerBridge activations."""

from __future__ import annotations

import copy

import pytest
import torch
from transformer_lens import patching
from transformer_lens.model_bridge import TransformerBridge

import mechinterp
from mechinterp.models.tiny import tiny_hf_model
from tests.conftest import IOI_PROMPT, assert_close_to_scale

SHARED_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "ln1.hook_scale",
    "mlp.hook_post",
)


def bridge_for(hf_model, tokenizer) -> TransformerBridge:
    """A bridge around a copy: booting a bridge swaps the model's attention modules in place,
    and the HF models here are session fixtures other tests compare against."""
    return TransformerBridge.boot_transformers(
        "reference", hf_model=copy.deepcopy(hf_model), tokenizer=tokenizer, device="cpu"
    )


# Tiny models (2-3 layers) and SmolLM2 (30 layers of fp32 in two implementations: errors of ~5e-5
# of the magnitude were seen, 1.6e-3 on a residual stream of ~30; its BOS residual reaches ~2.5e4,
# where one fp32 ulp is ~2e-3). Tolerances are relative to the magnitude compared.
TINY_REL = 5e-5
SMOLLM2_REL = 2e-4


@torch.no_grad()
def test_tiny_logits_and_loss_match_hf(tiny_pair, random_tokens):
    model, hf_model = tiny_pair
    tokens = random_tokens()
    logits, loss = model(tokens, return_type="both")
    reference = hf_model(tokens, labels=tokens)
    assert_close_to_scale(logits, reference.logits, TINY_REL)
    assert abs(loss.item() - reference.loss.item()) <= 1e-5


@torch.no_grad()
def test_llama3_rope_scaling_matches_hf(random_tokens):
    """Llama 3.x's frequency-dependent RoPE scaling (the checkpoint's own frequencies)."""
    hf_model, tokenizer = tiny_hf_model("llama3", n_kv_heads=2)
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    tokens = random_tokens(n_pos=40)  # past the scaling's original context (16)
    assert_close_to_scale(model(tokens), hf_model(tokens).logits, TINY_REL)


@torch.no_grad()
def test_tiny_hooks_match_bridge(tiny_pair, random_tokens):
    model, hf_model = tiny_pair
    bridge = bridge_for(hf_model, model.tokenizer)
    tokens = random_tokens()
    _, ours = model.run_with_cache(tokens)
    _, theirs = bridge.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        for hook in SHARED_HOOKS:
            name = f"blocks.{layer}.{hook}"
            if hook == "hook_resid_mid" and model.architecture.parallel_attn_mlp:
                continue  # a parallel block has no residual between attention and MLP
            if hook == "ln1.hook_scale" and model.architecture.block_norms == "post":
                continue  # OLMo 2 normalises sublayer outputs only: there is no ln1
            assert_close_to_scale(ours[name], theirs[name], TINY_REL, name=name)


@torch.no_grad()
def test_tl_patching_on_native_equals_bridge(representative_pair, random_tokens):
    model, hf_model = representative_pair
    bridge = bridge_for(hf_model, model.tokenizer)
    clean, corrupt = random_tokens(1, 6, seed=2), random_tokens(1, 6, seed=3)

    def metric(logits):
        return logits[0, -1, 5] - logits[0, -1, 7]

    results = []
    for runner in (model, bridge):
        _, cache = runner.run_with_cache(clean)
        results.append(patching.get_act_patch_resid_pre(runner, corrupt, cache, metric))
    assert results[0].shape == (model.cfg.n_layers, 6)
    assert_close_to_scale(*results, TINY_REL, dim=None)


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_logits_match_hf(smollm2):
    model, hf_model = smollm2
    tokens = model.to_tokens([IOI_PROMPT, "The Eiffel Tower is located in the city of"])
    assert_close_to_scale(model(tokens), hf_model(tokens).logits, SMOLLM2_REL)


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_hooks_match_bridge(smollm2):
    model, hf_model = smollm2
    bridge = bridge_for(hf_model, model.tokenizer)
    tokens = model.to_tokens(IOI_PROMPT)
    _, ours = model.run_with_cache(tokens)
    _, theirs = bridge.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        for hook in SHARED_HOOKS:
            name = f"blocks.{layer}.{hook}"
            assert_close_to_scale(ours[name], theirs[name], SMOLLM2_REL, name=name)


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_tl_patching_equals_bridge(smollm2):
    model, hf_model = smollm2
    bridge = bridge_for(hf_model, model.tokenizer)
    clean = model.to_tokens("When Mary and John went")
    corrupt = clean.clone()
    corrupt[0, 2] = model.to_single_token(" John")
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")

    def metric(logits):
        return logits[0, -1, mary] - logits[0, -1, john]

    results = []
    for runner in (model, bridge):
        _, cache = runner.run_with_cache(clean)
        results.append(patching.get_act_patch_resid_pre(runner, corrupt, cache, metric))
    assert_close_to_scale(*results, SMOLLM2_REL, dim=None)
