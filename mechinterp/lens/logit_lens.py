"""The logit lens: decode the residual stream at every layer through the final norm and unembedding.

nostalgebraist (2020) read intermediate residual streams as if they were the last one:
``unembed(final_norm(resid_l))``. We use the model's real final norm (its statistics
recomputed on each layer's residual) and unembedding with its bias, and never hold logits
for all layers at once: one layer at a time, the vocabulary in chunks, keeping only the
top-k tokens, the target tokens' logit / probability / rank and the KL divergence from the
model's final next-token distribution.

Example:
    >>> lens = logit_lens(model, "The Eiffel Tower is located in the city of", targets=[" Paris"])
    >>> lens.target_rank[:, 0, -1]       # rank of " Paris" at the last position, per layer
    >>> lens.top_strings(example=0, position=-1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechinterp.dims import AttentionMask, Tokens
from mechinterp.models.tokenization import TextInput


@dataclass(frozen=True, eq=False)
class LensResult:
    """Per layer (``layers`` labels), example and position: top-k tokens and probabilities,
    target statistics (when targets were given) and KL(final || layer)."""

    layers: list[str]
    top_tokens: Int[Tensor, "layer batch pos top"]
    top_probs: Float[Tensor, "layer batch pos top"]
    kl_to_final: Float[Tensor, "layer batch pos"]
    target_logit: Float[Tensor, "layer batch pos"] | None
    target_prob: Float[Tensor, "layer batch pos"] | None
    target_rank: Int[Tensor, "layer batch pos"] | None  # 0 = top token
    str_tokens: list[list[str]]  # [batch][pos]
    top_strings_table: list  # [layer][batch][pos][k] decoded top tokens

    def top_strings(self, example: int = 0, position: int = -1) -> dict[str, list[str]]:
        """Layer label -> decoded top-k tokens at one position."""
        return {label: self.top_strings_table[i][example][position] for i, label in enumerate(self.layers)}


def _final_log_probs(model, residual: Tensor, vocab_chunk: int) -> Tensor:
    normed = model.ln_final(residual)
    return (
        torch.cat(
            [
                model.unembed.columns(normed, i, i + vocab_chunk)
                for i in range(0, model.architecture.d_vocab, vocab_chunk)
            ],
            dim=-1,
        )
        .float()
        .log_softmax(-1)
    )


def _decode_layer(model, normed: Tensor, final_probs: Tensor, targets: Tensor | None, top_k: int, chunk: int):
    """One layer's statistics, unembedding ``chunk`` vocabulary columns at a time: top-k ids
    and logits, log partition function, ``sum_v p_final(v) * logit(v)``, target logit, rank."""
    top_values = top_ids = log_norm = None
    cross = torch.zeros(normed.shape[:2], device=normed.device)
    target_logit = rank = None
    if targets is not None:  # from the same chunked products as below, so ranks are exact
        target_logit = torch.zeros(normed.shape[:2], device=normed.device)
        for first in (targets // chunk * chunk).unique().tolist():
            logits = model.unembed.columns(normed, first, first + chunk).float()
            rows = (targets // chunk * chunk == first).nonzero().flatten()
            target_logit[rows] = logits[rows, :, targets[rows] - first]
        rank = torch.zeros_like(target_logit, dtype=torch.long)
    for start in range(0, model.architecture.d_vocab, chunk):
        stop = min(start + chunk, model.architecture.d_vocab)
        logits = model.unembed.columns(normed, start, stop).float()
        chunk_norm = logits.logsumexp(-1)
        log_norm = chunk_norm if log_norm is None else torch.logaddexp(log_norm, chunk_norm)
        cross += (final_probs[..., start:stop] * logits).sum(-1)
        values, ids = logits.topk(min(top_k, stop - start), dim=-1)
        ids = ids + start
        if top_values is None:
            top_values, top_ids = values, ids
        else:  # merge this chunk's candidates with the running top-k
            values, ids = torch.cat([top_values, values], -1), torch.cat([top_ids, ids], -1)
            top_values, order = values.topk(min(top_k, values.shape[-1]), dim=-1)
            top_ids = ids.gather(-1, order)
        if targets is not None:
            rank += (logits > target_logit[..., None]).sum(-1)
    return top_ids, top_values, log_norm, cross, target_logit, rank


@torch.no_grad()
def logit_lens(
    model,
    input: TextInput | Tokens,
    *,
    targets: list[str] | Int[Tensor, " batch"] | None = None,
    top_k: int = 5,
    include_mid: bool = False,
    attention_mask: AttentionMask | None = None,
    vocab_chunk: int = 8192,
) -> LensResult:
    """Decode the residual stream entering every layer (and, with ``include_mid``, between
    attention and MLP) plus the final one.

    Args:
        input: text or tokens ``[batch, pos]``.
        targets: one token per example (strings of one token each, or ids ``[batch]``) whose
            logit, probability and rank are tracked at every layer and position.
        top_k: how many top tokens to keep per layer and position.
        vocab_chunk: vocabulary columns unembedded at a time (memory: ``batch x pos x chunk``).
    """
    if isinstance(input, (str, list)):
        tokens, attention_mask = model.encode(input)
    else:
        tokens = input.to(model.device)
    batch = tokens.shape[0]
    if targets is not None:
        if not isinstance(targets, Tensor):
            targets = torch.tensor([model.to_single_token(t) for t in targets], device=model.device)
        if targets.shape != (batch,):
            raise ValueError(
                f"targets must give one token per example ({batch}), got shape {tuple(targets.shape)}"
            )
        targets = targets.to(model.device)
    if include_mid and model.architecture.attn_only:
        raise ValueError(
            f"include_mid=True reads resid_mid, between attention and MLP; {model.architecture.model_name} "
            "is attention-only (no MLP, no resid_mid): use include_mid=False"
        )
    names = []
    labels = []
    for layer in range(model.architecture.n_layers):
        names.append(f"blocks.{layer}.hook_resid_pre")
        labels.append(f"{layer}_pre")
        if include_mid:
            names.append(f"blocks.{layer}.hook_resid_mid")
            labels.append(f"{layer}_mid")
    names.append(f"blocks.{model.architecture.n_layers - 1}.hook_resid_post")
    labels.append("final")
    _, cache = model.run_with_cache(tokens, attention_mask=attention_mask, names_filter=names)
    final_log_probs = _final_log_probs(model, cache[names[-1]], vocab_chunk)
    final_probs = final_log_probs.exp()
    negative_entropy = (final_probs * final_log_probs).sum(-1)
    tops, top_ps, kls, t_logits, t_probs, t_ranks = [], [], [], [], [], []
    for name in names:
        layer_stats = _decode_layer(
            model, model.ln_final(cache[name]), final_probs, targets, top_k, vocab_chunk
        )
        top_ids, top_values, log_norm, cross, target_logit, rank = layer_stats
        tops.append(top_ids.cpu())
        top_ps.append((top_values - log_norm[..., None]).exp().cpu())
        kls.append((negative_entropy - cross + log_norm).cpu())  # sum p_f log p_f - sum p_f log p_layer
        if targets is not None:
            t_logits.append(target_logit.cpu())
            t_probs.append((target_logit - log_norm).exp().cpu())
            t_ranks.append(rank.cpu())
    # models without a tokenizer (token-id toys) are labelled by token id
    decode = model.to_string if model.tokenizer is not None else str
    str_tokens = [[decode(int(t)) for t in row] for row in tokens]
    top_tokens = torch.stack(tops)
    table = [
        [[[decode(int(t)) for t in position] for position in example] for example in layer]
        for layer in top_tokens
    ]
    return LensResult(
        layers=labels,
        top_tokens=top_tokens,
        top_probs=torch.stack(top_ps),
        kl_to_final=torch.stack(kls),
        target_logit=torch.stack(t_logits) if targets is not None else None,
        target_prob=torch.stack(t_probs) if targets is not None else None,
        target_rank=torch.stack(t_ranks) if targets is not None else None,
        str_tokens=str_tokens,
        top_strings_table=table,
    )
