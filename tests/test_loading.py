"""Every source ``load_model`` accepts gives the same native model."""

from __future__ import annotations

import pytest
import torch

import mechinterp
from mechinterp.models.embedded import EMBEDDED_MODELS, embedded_model_dir, gguf_path
from mechinterp.models.tiny import tiny_hf_model


@pytest.mark.parametrize("family", ["qwen2", "gemma3", "phi3"])  # gemma3: per-type RoPE; phi3: longrope
@torch.no_grad()
def test_local_hf_directory(tmp_path, random_tokens, family):
    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=2)
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = mechinterp.load_model(tmp_path, device="cpu")
    tokens = random_tokens()
    torch.testing.assert_close(model(tokens), hf_model(tokens).logits, atol=1e-4, rtol=0)
    assert model.to_str_tokens("ok") == ["<bos>", "o", "k"]
    assert model.architecture.model_name == str(tmp_path)


@torch.no_grad()
def test_bfloat16_load_keeps_rotary_frequencies_exact(random_tokens):
    hf_model, tokenizer = tiny_hf_model("llama")
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert model.rotary.inv_freq.dtype == torch.float32
    logits = model(random_tokens()).float()
    reference = hf_model(random_tokens()).logits
    # bf16 keeps ~3 significant digits; errors compound over layers, so compare to the scale
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max()


@pytest.mark.slow
@torch.no_grad()
def test_gguf_file_equals_embedded_cache(smollm2):
    """Loading the package's .gguf directly dequantises to the same weights as the cache."""
    cached, _ = smollm2
    direct = mechinterp.load_model(gguf_path(EMBEDDED_MODELS["smollm2-135m"]), device="cpu")
    tokens = cached.to_tokens("The Eiffel Tower is located in the city of")
    assert torch.equal(direct(tokens), cached(tokens))
    assert (embedded_model_dir("smollm2-135m") / "config.json").exists()


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_knows_paris(smollm2):
    model, _ = smollm2
    logits = model("The Eiffel Tower is located in the city of")
    assert model.to_string(logits[0, -1].argmax()) == " Paris"


def test_char_tokenizer_leaves_no_temporary_folders(tmp_path):
    """One folder per process, removed at exit (the suite used to leave ~150 per run)."""
    import os
    import subprocess
    import sys

    script = (
        "from mechinterp.models.tiny import char_tokenizer\n"
        "a, b = char_tokenizer(), char_tokenizer()\n"
        "assert a.name_or_path == b.name_or_path\n"
        "print(a.name_or_path)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    found = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip().startswith(str(tmp_path))
    assert not list(tmp_path.glob("mechinterp-chartok-*"))


def test_a_folder_without_tokenizer_files_loads_without_a_tokenizer(tmp_path):
    """``save_pretrained`` of a model alone: one warning, no tokenizer, ids instead of ''."""
    import warnings

    import circuits
    from mechinterp.metrics import LogitDifference
    from mechinterp.models.tiny import char_tokenizer

    hf_model, _ = tiny_hf_model("qwen2", n_kv_heads=2)
    hf_model.save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mechinterp.load_model(tmp_path, device="cpu")
    mine = [w for w in caught if "tokenizer" in str(w.message)]
    assert len(mine) == 1 and "load_model(path, tokenizer=" in str(mine[0].message)
    assert model.tokenizer is None
    with pytest.raises(ValueError, match="no tokenizer, so it cannot read or write text"):
        model.to_tokens("Hello")
    clean = torch.tensor([[1, 36, 40, 36]])
    metric = LogitDifference(torch.tensor([3]), torch.tensor([40]), torch.tensor([41]))
    record = circuits.prompt_record(model, circuits.PairedData(clean, clean.flip(1)), metric)
    assert record["tokens"] == ["<id 1>", "<id 36>", "<id 40>", "<id 36>"] and record["answer"] == "<id 40>"
    from mechinterp.token_attribution import attribute_tokens

    found = attribute_tokens(model, clean, correct=40, method="gradient_x_input")
    assert found.tokens[0] == ["<id 1>", "<id 36>", "<id 40>", "<id 36>"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        given = mechinterp.load_model(tmp_path, device="cpu", tokenizer=char_tokenizer())
    assert given.to_str_tokens("ab")[1:] == ["a", "b"]
