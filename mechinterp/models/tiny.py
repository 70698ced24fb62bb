"""Tiny random Hugging Face models and a character tokenizer, for tests and demos.

Every family gets a 2-layer, width-64 model over a ~100-symbol character vocabulary, built
from a config (no download). They exercise the same conversion code as real checkpoints.

Example:
    >>> hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
    >>> model = mechinterp.load_model(hf_model, tokenizer=tokenizer)
"""

from __future__ import annotations

import atexit
import shutil
import string
import tempfile
from functools import cache
from typing import Any

import torch

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
TINY_FAMILIES = (
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "gpt_neox",
    "llama3",
    "gemma2",
    "gemma3",
    "qwen3",
    "olmo2",
    "phi3",
    "gptj",
)


def char_tokenizer() -> Any:
    """A fast HF tokenizer with one token per printable ASCII character (98 tokens).

    It is saved to and reloaded from a temporary directory so that it behaves like any
    tokenizer loaded from disk (TransformerLens reloads tokenizers by ``name_or_path``).
    The directory is written once per process and removed when the process exits.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_char_tokenizer_dir())


@cache
def _char_tokenizer_dir() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = [*SPECIAL_TOKENS, *string.printable[:95]]
    core = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    directory = tempfile.mkdtemp(prefix="mechinterp-chartok-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    fast.save_pretrained(directory)
    return directory


def tiny_hf_config(
    family: str, *, n_layers: int = 2, n_kv_heads: int | None = None, vocab_size: int = 98, **overrides: Any
) -> Any:
    """A small HF config of ``family`` (one of ``TINY_FAMILIES``): d_model 64, 4 heads.

    Sliding windows are 4 positions (shorter than test prompts), Gemma layers alternate
    sliding and full attention, soft-caps are small enough to bend the values they cap,
    and Llama 3 / Phi-3 use their RoPE scalings."""
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
        "qwen3": lambda: transformers.Qwen3Config(**llama_like, head_dim=16, **common),
        "olmo2": lambda: transformers.Olmo2Config(**llama_like, **common),
        "gemma2": lambda: transformers.Gemma2Config(
            **llama_like,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=4,
            attn_logit_softcapping=3.0,
            final_logit_softcapping=5.0,
            hidden_activation="gelu_pytorch_tanh",
            **common,
        ),
        "gemma3": lambda: transformers.Gemma3TextConfig(
            **llama_like,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"][:n_layers],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0},
            },
            **common,
        ),
        "llama3": lambda: transformers.LlamaConfig(
            **llama_like,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            **common,
        ),
        "phi3": lambda: transformers.Phi3Config(
            **{**llama_like, "max_position_embeddings": 256},
            sliding_window=4,
            original_max_position_embeddings=128,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0, 1.5, 2.0, 4.0],
                "long_factor": [2.0, 3.0, 5.0, 9.0],
            },
            **common,
        ),
        "gptj": lambda: transformers.GPTJConfig(
            n_embd=64,
            n_layer=n_layers,
            n_head=4,
            n_positions=128,
            rotary_dim=8,
            tie_word_embeddings=False,
            **common,
        ),
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
    config.architectures = [type(model).__name__]  # as saved checkpoints record it (the bridge reads it)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name or "ln" in name:
                param.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                param.copy_(noise * (0.2 if param.ndim > 1 else 0.1))
    return model.eval(), char_tokenizer()
