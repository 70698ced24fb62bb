"""TransformerLens' weight processing: fold norm weights into the next linear map, centre the
weights that write to the residual stream, centre the unembedding.

Each step rewrites a loaded ``HookedLM`` in place and leaves its logits unchanged (up to
float rounding); ``center_unembed`` shifts every position's logits by a constant, which
leaves probabilities unchanged. ``load_model`` applies them (see its ``fold_ln``,
``center_writing_weights``, ``center_unembed`` and ``fold_final_norm`` options).

Why fold the *final* norm by default: TransformerLens' logit attribution tools
(``ActivationCache.logit_attrs`` / ``apply_ln_to_stack`` / ``decompose_resid(apply_ln=True)``
/ ``get_full_resid_decomposition`` and ``tools.analysis.direct_logit_attribution``) divide
a residual stack by the cached ``ln_final.hook_scale`` and dot it with ``W_U``. That equals
the model's logits only when the norm's learned scale (and a LayerNorm's bias) live in
``W_U`` (and ``b_U``). After ``fold_final_norm``, ``ln_final.w`` is all ones (``b`` zero),
``W_U = diag(w) W_U_checkpoint`` and ``b_U = b_U_checkpoint + b W_U_checkpoint``.

Example:
    >>> model = load_model("gpt2-like-checkpoint", fold_ln=True, center_writing_weights=True)
    >>> model.blocks[0].ln1.w.unique()          # folded into W_Q, W_K, W_V
    tensor([1.])
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechinterp.models.hooked_lm import HookedLM
from mechinterp.models.layers import Norm


def _reset(norm: Norm) -> None:
    norm.w.fill_(1.0)
    if norm.b is not None:
        norm.b.zero_()


def _fold_into(norm: Norm, weight: Tensor, bias: Tensor | None, d_model_axis: int) -> None:
    """``(x * w + b) @ W + c`` -> ``x @ (w W) + (c + b W)``, in place.

    ``weight`` reads the norm's output along ``d_model_axis``; ``bias`` (``None`` for a
    bias-free weight such as a gate) must absorb ``b @ weight``.
    """
    shape = [1] * weight.ndim
    shape[d_model_axis] = -1
    if norm.b is not None and norm.b.any():
        if bias is None:
            raise ValueError(
                "cannot fold a LayerNorm bias into a weight without a bias (a gated MLP's W_gate); "
                "load with fold_ln=False"
            )
        bias.add_((weight * norm.b.reshape(shape)).sum(d_model_axis))
    weight.mul_(norm.w.reshape(shape))
    if norm.centred:  # the norm's output has zero mean over d_model: centring W changes nothing
        weight.sub_(weight.mean(d_model_axis, keepdim=True))


@torch.no_grad()
def fold_final_norm(model: HookedLM) -> None:
    """Move ``ln_final``'s scale (and LayerNorm bias) into ``W_U`` (and ``b_U``)."""
    norm = model.ln_final
    if norm.b is not None:
        model.unembed.b_U.add_(norm.b @ model.unembed.W_U)
    model.unembed.W_U.mul_(norm.w[:, None])
    _reset(norm)


@torch.no_grad()
def fold_layer_norm(model: HookedLM) -> None:
    """TransformerLens' ``fold_ln``: every pre-norm's scale and bias go into the weights that
    read it (``ln1`` into ``W_Q``, ``W_K_grouped``, ``W_V_grouped`` and their biases, ``ln2``
    into ``W_in``, ``W_gate``, ``b_in``), and ``ln_final`` into the unembedding. For
    LayerNorm models the folded weights are also centred over ``d_model``, as in TL.

    Raises:
        ValueError: for post-norm blocks (no norm in front of the sublayer to fold) and for a
            LayerNorm bias in front of a gated MLP (its gate has no bias to absorb it).
    """
    if getattr(model.architecture, "block_norms", "pre") == "post":
        raise ValueError("fold_ln needs pre-norm blocks; this model normalises after each sublayer")
    for block in model.blocks:
        attn = block.attn
        _fold_into(block.ln1, attn.W_Q, attn.b_Q, d_model_axis=1)
        _fold_into(block.ln1, attn.W_K_grouped, attn.b_K_grouped, d_model_axis=1)
        _fold_into(block.ln1, attn.W_V_grouped, attn.b_V_grouped, d_model_axis=1)
        _reset(block.ln1)
        if model.architecture.attn_only:
            continue
        mlp = block.mlp
        if mlp.W_gate is not None:
            _fold_into(block.ln2, mlp.W_gate, None, d_model_axis=0)
        _fold_into(block.ln2, mlp.W_in, mlp.b_in, d_model_axis=0)
        _reset(block.ln2)
    fold_final_norm(model)


@torch.no_grad()
def center_writing_weights(model: HookedLM) -> None:
    """Remove the mean over ``d_model`` from everything that writes to the residual stream
    (``W_E``, ``W_pos``, ``W_O``, ``b_O``, ``W_out``, ``b_out``). Every reader is a LayerNorm,
    which removes that mean anyway, so logits do not change (the residual stream does).

    Raises:
        ValueError: on RMSNorm models, whose norms do not remove the mean.
    """
    if model.architecture.norm != "layernorm":
        raise ValueError(
            f"center_writing_weights needs LayerNorm readers; {model.architecture.model_name} uses "
            f"{model.architecture.norm}, which does not remove the mean, so centring would change the logits"
        )
    writers = [model.embed.W_E]
    if model.pos_embed is not None:
        writers.append(model.pos_embed.W_pos)
    for block in model.blocks:
        writers += [block.attn.W_O, block.attn.b_O]
        if not model.architecture.attn_only:
            writers += [block.mlp.W_out, block.mlp.b_out]
    for weight in writers:
        weight.sub_(weight.mean(-1, keepdim=True))


@torch.no_grad()
def center_unembed(model: HookedLM) -> None:
    """Remove the mean over the vocabulary from ``W_U`` and ``b_U``: every position's logits
    move by one constant, so probabilities (softmax) are unchanged.

    Raises:
        ValueError: when the logits are soft-capped (the cap is not shift-invariant).
    """
    if getattr(model.architecture, "final_softcap", None) is not None:
        raise ValueError("center_unembed would change soft-capped logits; load with center_unembed=False")
    model.unembed.W_U.sub_(model.unembed.W_U.mean(-1, keepdim=True))
    model.unembed.b_U.sub_(model.unembed.b_U.mean())
