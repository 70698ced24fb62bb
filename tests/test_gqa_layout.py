"""Grouped-query weights in TransformerLens' layout, checked against the HF checkpoint.

HF query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``; TL utilities
index ``W_K`` / ``W_V`` / ``b_K`` / ``b_V`` by query head.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens import SVDInterpreter
from transformer_lens.FactoredMatrix import FactoredMatrix

import mechinterp
from mechinterp.models.tiny import tiny_hf_model


@pytest.fixture(scope="module")
def gqa_pair():
    """Tiny Qwen2 (q/k/v biases) with 4 query heads sharing 2 kv heads, and its HF model."""
    hf_model, tokenizer = tiny_hf_model("qwen2", n_kv_heads=2)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu"), hf_model


def _hf_head(hf_model, layer: int, head: int) -> dict[str, torch.Tensor]:
    """Query head ``head``'s weights read straight from the HF projections."""
    attn = hf_model.model.layers[layer].self_attn
    cfg = hf_model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    kv = head // (cfg.num_attention_heads // cfg.num_key_value_heads)
    rows, kv_rows = slice(head * d, (head + 1) * d), slice(kv * d, (kv + 1) * d)
    return {
        "W_Q": attn.q_proj.weight[rows].T,
        "W_K": attn.k_proj.weight[kv_rows].T,
        "W_V": attn.v_proj.weight[kv_rows].T,
        "b_K": attn.k_proj.bias[kv_rows],
        "b_V": attn.v_proj.bias[kv_rows],
        "W_O": attn.o_proj.weight[:, rows].T,
    }


@torch.no_grad()
def test_per_head_weights_match_hf(gqa_pair):
    model, hf_model = gqa_pair
    assert model.W_K.shape == (2, 4, 64, 16) and model.W_K_grouped.shape == (2, 2, 64, 16)
    params = model.tl_parameters()
    for layer in range(2):
        for head in range(4):
            hf = _hf_head(hf_model, layer, head)
            for name in ("W_K", "W_V", "b_K", "b_V"):
                torch.testing.assert_close(getattr(model, name)[layer, head], hf[name])
                torch.testing.assert_close(getattr(model.blocks[layer].attn, name)[head], hf[name])
                torch.testing.assert_close(params[f"blocks.{layer}.attn.{name}"][head], hf[name])
            torch.testing.assert_close(model.QK[layer, head].AB, hf["W_Q"] @ hf["W_K"].T)
            torch.testing.assert_close(model.OV[layer, head].AB, hf["W_V"] @ hf["W_O"])
            attn = model.blocks[layer].attn
            factored = FactoredMatrix(attn.W_V[head], attn.W_O[head])
            torch.testing.assert_close(factored.AB, hf["W_V"] @ hf["W_O"])


@torch.no_grad()
def test_svd_interpreter_uses_the_query_heads_values(gqa_pair):
    model, hf_model = gqa_pair
    interpreter = SVDInterpreter(model)
    for head in (1, 3):  # head 1 shares kv head 0, head 3 kv head 1 (index 3 > kv heads)
        hf = _hf_head(hf_model, 0, head)
        expected_v = FactoredMatrix(hf["W_V"], hf["W_O"]).V.T
        expected = (model.W_U.T @ expected_v[:3].T).unsqueeze(1)
        got = interpreter.get_singular_vectors("OV", layer_index=0, head_index=head, num_vectors=3)
        # singular vectors are defined up to sign: compare column by column, sign-aligned
        signs = torch.sign((got * expected).sum(0, keepdim=True))
        torch.testing.assert_close(got * signs, expected, rtol=1e-4, atol=1e-5)


def test_derived_views_are_read_only_and_carry_gradients(gqa_pair):
    model, _ = gqa_pair
    attn = model.blocks[0].attn
    with pytest.raises(AttributeError):
        attn.W_K = torch.zeros_like(attn.W_K)
    assert "blocks.0.attn.W_K" not in dict(model.named_parameters())
    attn.W_V[3].sum().backward()
    grad = attn.W_V_grouped.grad
    assert grad[1].eq(1).all() and grad[0].eq(0).all()
    attn.W_V_grouped.grad = None
