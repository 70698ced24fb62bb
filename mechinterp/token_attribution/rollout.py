"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Each layer's attention, averaged over heads, is mixed with the identity for the residual
connection, ``A_l = 0.5 * mean_h(pattern_l) + 0.5 * I`` (rows still sum to 1), and the
layers are multiplied, ``R = A_{L-1} ... A_1 A_0``. Row ``t`` of ``R`` says how much of
position ``t``'s final state flows from each input position; its entries are non-negative
and sum to 1. Under grouped-query attention the mean runs over *query* heads (the model's
``hook_pattern`` is per query head), so each key/value head counts once per query head that
reads it.

Rollout reads attention only: it does not depend on the answer being explained, and it
ignores what the MLPs and value vectors do.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


@torch.no_grad()
def attention_rollout(
    model,
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"],
    positions: Int[Tensor, " batch"],
) -> Float[Tensor, "batch pos"]:
    """Row ``positions[b]`` of the rollout matrix of each example (zeros at padding)."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.architecture.n_layers)]
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
    batch = tokens.shape[0]
    flow = torch.zeros(batch, tokens.shape[1], dtype=torch.float32, device=tokens.device)
    flow[torch.arange(batch, device=tokens.device), positions.to(tokens.device)] = 1.0
    for name in reversed(names):  # flow @ A_{L-1} @ ... @ A_0, one row vector per example
        mixed = 0.5 * cache[name].float().mean(1) + 0.5 * torch.eye(tokens.shape[1], device=tokens.device)
        flow = torch.einsum("bq,bqk->bk", flow, mixed / mixed.sum(-1, keepdim=True))
    return flow * mask.to(flow.dtype)
