"""A two-minute tour on the embedded model: ``python -m mechinterp [PROMPT]``.

Loads SmolLM2-135M-Instruct natively, prints its top next-token predictions, caches every
activation, and summarises the cache (hook names and shapes), checking on the way that the
residual stream decomposes exactly into its components.
"""

from __future__ import annotations

import sys
import time

import torch

from mechinterp.models import load_model

DEFAULT_PROMPT = "The Eiffel Tower is located in the city of"


def main(prompt: str = DEFAULT_PROMPT, model_name: str = "smollm2-135m") -> None:
    started = time.perf_counter()
    model = load_model(model_name)
    print(f"loaded {model} in {time.perf_counter() - started:.1f}s")
    print(f"prompt tokens: {model.to_str_tokens(prompt)}")

    with torch.no_grad():
        logits, cache = model.run_with_cache(prompt)
    probs = logits[0, -1].softmax(-1)
    print("\ntop next-token predictions")
    for p, token in zip(*probs.topk(5), strict=True):
        print(f"  {model.to_string(token)!r:>14}  p={p.item():.3f}")

    total_mb = sum(t.numel() * t.element_size() for t in cache.values()) / 2**20
    print(f"\ncache: {len(cache)} activations, {total_mb:.1f} MiB; a few of them:")
    for name in (
        "hook_embed",
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_pattern",
        "blocks.0.mlp.hook_post",
        f"blocks.{model.cfg.n_layers - 1}.hook_resid_post",
    ):
        print(f"  {name:<32} {tuple(cache[name].shape)}")
    parts = cache.decompose_resid()
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    relative_error = ((parts.sum(0) - final).norm(dim=-1) / final.norm(dim=-1)).max().item()
    print(
        f"\nresidual stream = sum of its {parts.shape[0]} components (embeddings, every attention and "
        f"MLP output): max relative error {relative_error:.1e}"
    )


def run_from_command_line() -> None:
    main(" ".join(sys.argv[1:]) or DEFAULT_PROMPT)
