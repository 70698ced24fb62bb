"""Weight views, factored circuits and tokenizer helpers."""

from __future__ import annotations

import pytest
import torch

import mechinterp


def test_stacked_weight_shapes(tiny_llama):
    shapes = {
        name: tuple(getattr(tiny_llama, name).shape)
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "W_in", "W_gate", "W_out", "W_E", "W_U", "b_U")
    }
    assert shapes == {
        "W_Q": (2, 4, 64, 16),
        "W_K": (2, 4, 64, 16),
        "W_V": (2, 4, 64, 16),
        "W_O": (2, 4, 16, 64),
        "b_Q": (2, 4, 16),
        "b_K": (2, 4, 16),
        "W_in": (2, 64, 128),
        "W_gate": (2, 64, 128),
        "W_out": (2, 128, 64),
        "W_E": (98, 64),
        "W_U": (64, 98),
        "b_U": (98,),
    }
    assert not hasattr(tiny_llama, "W_pos")  # rotary: no learned positions


@torch.no_grad()
def test_ov_circuit_matches_the_model(tiny_llama):
    """Head 3 shares kv head 1 (GQA groups of 2): OV[0, 3] must use W_V[0, 1]."""
    ov = tiny_llama.OV
    assert ov.shape == (2, 4, 64, 64)
    expected = tiny_llama.W_V_grouped[0, 1] @ tiny_llama.W_O[0, 3]
    torch.testing.assert_close(ov[0, 3].AB, expected)
    qk = tiny_llama.QK
    torch.testing.assert_close(qk[1, 2].AB, tiny_llama.W_Q[1, 2] @ tiny_llama.W_K_grouped[1, 1].T)


def test_accumulated_bias_gpt2():
    from mechinterp.models.tiny import tiny_hf_model

    hf_model, tokenizer = tiny_hf_model("gpt2")
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    blocks = model.blocks
    expected = blocks[0].attn.b_O + blocks[0].mlp.b_out + blocks[1].attn.b_O
    torch.testing.assert_close(model.accumulated_bias(1, mlp_input=True), expected)


def test_tokenizer_helpers(tiny_llama):
    assert tiny_llama.to_str_tokens("hi!") == ["<bos>", "h", "i", "!"]
    assert tiny_llama.to_tokens("hi", prepend_bos=False).tolist() == [
        [tiny_llama.to_single_token("h"), tiny_llama.to_single_token("i")]
    ]
    tokens = tiny_llama.to_tokens(["a", "abc"])
    assert tokens.shape == (2, 4)
    assert tiny_llama.to_string(tokens[1]) == "<bos>abc"
    direction = tiny_llama.tokens_to_residual_directions("a")
    torch.testing.assert_close(direction, tiny_llama.W_U[:, tiny_llama.to_single_token("a")])
    assert tiny_llama.tokens_to_residual_directions(torch.tensor([[5, 6]])).shape == (1, 2, 64)


def test_architecture_config_is_frozen_and_validated():
    with pytest.raises(ValueError, match=r"n_heads \(6\) must be a multiple of n_kv_heads \(4\)"):
        mechinterp.ArchitectureConfig(
            n_layers=1,
            d_model=48,
            n_heads=6,
            n_kv_heads=4,
            d_head=8,
            d_mlp=8,
            d_vocab=10,
            n_ctx=8,
            act_fn="silu",
        )
