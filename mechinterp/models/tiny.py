"""Tiny random Hugging Face models and a character tokenizer, for tests and demos.

Every family gets a 2-layer, width-64 model over a ~100-symbol character vocabulary, built
from a config (no download). They exercise the same conversion code as real checkpoints.

Example:
    >>> hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
    >>> model = mechinterp.load_model(hf_model, tokenizer=tokenizer)
"""

from __future__ import annotations

import string
import tempfile
from typing import Any

import torch

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
TINY_FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gpt_neox")


def char_tokenizer() -> Any:
    """A fast HF tokenizer with one token per printable ASCII character (98 tokens).

    It is saved to and reloaded from a temporary directory so that it behaves like any
    tokenizer loaded from disk (TransformerLens reloads tokenizers by ``name_or_path``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    symbols = [*SPECIAL_TOKENS, *string.printable[:95]]
    core = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    directory = tempfile.mkdtemp(prefix="mechinterp-chartok-")
    fast.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def tiny_hf_config(
    family: str, *, n_layers: int = 2, n_kv_heads: int | None = None, vocab_size: int = 98, **overrides: Any
) -> Any:
    """A small HF config of ``family`` (one of ``TINY_FAMILIES``): d_model 64, 4 heads."""
    import transformers

    common = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    llama_like = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": n_kv_heads or 4,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    }
    builders = {
        "gpt2": lambda: transformers.GPT2Config(
            n_embd=64, n_layer=n_layers, n_head=4, n_positions=128, **common
        ),
        "llama": lambda: transformers.LlamaConfig(**llama_like, **common),
        "mistral": lambda: transformers.MistralConfig(**llama_like, sliding_window=8, **common),
        "qwen2": lambda: transformers.Qwen2Config(**llama_like, **common),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=128,
            rotary_pct=0.5,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            **common,
        ),
    }
    if family not in builders:
        raise ValueError(f"unknown tiny family {family!r}; choose from {', '.join(TINY_FAMILIES)}")
    config = builders[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_hf_model(family: str, *, seed: int = 0, **config_kwargs: Any) -> tuple[Any, Any]:
    """A randomly initialised tiny HF causal LM (eager attention, eval mode) and its tokenizer.

    Weights are drawn with a larger spread than HF's default init (std 0.02) and biases
    are made non-zero, so that attention patterns and norms are far from trivial and
    conversion mistakes show up in the logits.
    """
    import transformers

    config = tiny_hf_config(family, **config_kwargs)
    config._attn_implementation = "eager"
    generator = torch.Generator().manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name or "ln" in name:
                param.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                param.copy_(noise * (0.2 if param.ndim > 1 else 0.1))
    return model.eval(), char_tokenizer()
