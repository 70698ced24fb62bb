"""Direct logit attribution: how much each component writes the answer directly.

The final residual stream is a sum of components (embeddings, each attention head's output,
attention and MLP biases, each MLP's output or each neuron's ``activation * W_out`` row).
The logit difference ``logit[correct] - logit[incorrect]`` reads it through the final norm.
**Approximation:** the norm's scale (its divisor) is frozen at its value on the full
residual stream, which makes the norm linear (LayerNorm's mean subtraction is linear
anyway). Each component's attribution is then ``center?(c) / scale * w . (W_U[:, correct] -
W_U[:, incorrect])``, and the attributions plus the constant term (norm bias and unembedding
bias) sum exactly to the true logit difference.

Models with a norm after each sublayer (Gemma 2/3, OLMo 2) get the same treatment there:
each part of a sublayer's output is read through that norm's frozen ``w / scale`` (heads:
``Attention.head_outputs``' shares). Models with a final-logit soft-cap (Gemma 2) are
explained before the cap, which is not linear: ``logit_diff`` is then the difference of
the uncapped logits.

Example:
    >>> dla = direct_logit_attribution(model, prompts, correct=[" Mary"], incorrect=[" John"])
    >>> dla.by_head().mean(-1)          # [layer, head]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechinterp.dims import AttentionMask, PerExample, Tokens
from mechinterp.metrics import last_positions
from mechinterp.models.tokenization import TextInput

Granularity = Literal["layer", "head", "neuron"]


@dataclass(frozen=True, eq=False)
class DLAResult:
    """``values``: ``[component, batch]`` attributions, named by ``labels`` and typed by
    ``kinds`` (``embed``, ``pos_embed``, ``head``, ``attn``, ``attn_bias``, ``mlp``,
    ``neuron``, ``mlp_bias``, ``constant``). ``logit_diff`` is the model's true value."""

    values: Float[Tensor, "component batch"]
    labels: list[str]
    kinds: list[str]
    layers: list[int | None]
    logit_diff: PerExample
    n_layers: int
    n_heads: int

    @property
    def total(self) -> PerExample:
        """Sum of all attributions (equals ``logit_diff`` up to float error)."""
        return self.values.sum(0)

    def by_head(self) -> Float[Tensor, "layer head batch"]:
        """``[layer, head, batch]`` attributions of single heads (head granularity)."""
        rows = [i for i, kind in enumerate(self.kinds) if kind == "head"]
        if not rows:
            raise ValueError("no per-head attributions: use granularity='head'")
        return self.values[rows].reshape(self.n_layers, self.n_heads, -1)

    def by_layer(self) -> dict[str, Float[Tensor, "layer batch"]]:
        """``{"attn": [layer, batch], "mlp": [layer, batch]}``, biases included."""
        out = {
            "attn": torch.zeros(self.n_layers, self.values.shape[1]),
            "mlp": torch.zeros(self.n_layers, self.values.shape[1]),
        }
        for value, kind, layer in zip(self.values, self.kinds, self.layers, strict=True):
            if kind in ("head", "attn", "attn_bias"):
                out["attn"][layer] += value
            elif kind in ("mlp", "neuron", "mlp_bias"):
                out["mlp"][layer] += value
        return out


@torch.no_grad()
def direct_logit_attribution(
    model,
    input: TextInput | Tokens,
    *,
    correct: list[str] | Int[Tensor, " batch"],
    incorrect: list[str] | Int[Tensor, " batch"],
    positions: Int[Tensor, " batch"] | None = None,
    granularity: Granularity = "head",
    attention_mask: AttentionMask | None = None,
) -> DLAResult:
    """Attribute ``logit[correct] - logit[incorrect]`` at each example's position (default:
    its last real token) to every component writing into the final residual stream."""
    if isinstance(input, (str, list)):
        tokens, attention_mask = model.encode(input)
    else:
        tokens = input.to(model.device)
        attention_mask = (
            torch.ones_like(tokens) if attention_mask is None else attention_mask.to(model.device)
        )
    batch = tokens.shape[0]
    ids = []
    for answers in (correct, incorrect):
        answers = (
            answers
            if isinstance(answers, Tensor)
            else torch.tensor([model.to_single_token(a) for a in answers], device=model.device)
        )
        if answers.shape != (batch,):
            raise ValueError(f"need one answer per example ({batch}), got shape {tuple(answers.shape)}")
        ids.append(answers.to(model.device))
    positions = last_positions(attention_mask) if positions is None else positions.to(model.device)
    arch = model.architecture
    if granularity == "neuron" and arch.attn_only:
        raise ValueError(f"granularity='neuron' needs MLPs; {arch.model_name} is attention-only")
    _, cache = model.run_with_cache(tokens, attention_mask=attention_mask)
    rows = torch.arange(batch, device=model.device)
    final = cache[f"blocks.{arch.n_layers - 1}.hook_resid_post"][rows, positions]
    logits = model.unembed.uncapped(model.ln_final(final)).float()  # the soft-cap is not linear
    logit_diff = logits[rows, ids[0]] - logits[rows, ids[1]]

    # attributions are accumulated in float32 whatever the model dtype
    unembed = model.W_U.float()
    direction = (unembed[:, ids[0]] - unembed[:, ids[1]]).T * model.ln_final.w.float()  # [batch, d_model]
    if arch.norm == "layernorm":  # (c - mean c) . u == c . (u - mean u)
        direction = direction - direction.mean(-1, keepdim=True)
    reader = direction / cache["ln_final.hook_scale"][rows, positions].float()  # [batch, d_model]

    def at(name: str) -> Tensor:
        return cache[name][rows, positions].float()

    values, labels, kinds, layers = [], [], [], []

    def add(value: Tensor, label: str, kind: str, layer: int | None) -> None:
        values.append(value.float())
        labels.append(label)
        kinds.append(kind)
        layers.append(layer)

    add((at("hook_embed") * reader).sum(-1), "embed", "embed", None)
    if model.pos_embed is not None:
        add((at("hook_pos_embed") * reader).sum(-1), "pos_embed", "pos_embed", None)
    for layer, block in enumerate(model.blocks):
        z = cache[f"blocks.{layer}.attn.hook_z"][rows, positions][:, None]  # [batch, 1, head, d_head]
        attn_bias = (
            block.attn.bias_share(z)[:, 0].float().to(reader.device)
        )  # b_O, or its share under a post-norm
        if granularity == "layer":
            attn = at(f"blocks.{layer}.hook_attn_out") - attn_bias
            add((attn * reader).sum(-1), f"L{layer} attn", "attn", layer)
        else:
            per_head = (block.attn.head_outputs(z)[:, 0].float() * reader[:, None]).sum(-1)  # [batch, head]
            for head in range(arch.n_heads):
                add(per_head[:, head], f"L{layer} H{head}", "head", layer)
        add((attn_bias * reader).sum(-1), f"L{layer} attn bias", "attn_bias", layer)
        if arch.attn_only:
            continue
        mlp_reader = reader  # the raw MLP output's reader: through the post-norm's frozen w / scale
        if block.ln2_post is not None:
            mlp_reader = (
                reader
                * block.ln2_post.w.float().to(reader.device)
                / at(f"blocks.{layer}.ln2_post.hook_scale")
            )
        if granularity == "neuron":
            neuron_readers = mlp_reader @ block.mlp.W_out.float().to(reader.device).T  # [batch, d_mlp]
            per_neuron = at(f"blocks.{layer}.mlp.hook_post") * neuron_readers
            for neuron in range(arch.d_mlp):
                add(per_neuron[:, neuron], f"L{layer} N{neuron}", "neuron", layer)
        else:
            mlp = (at(f"blocks.{layer}.hook_mlp_out") * reader).sum(-1)
            add(
                mlp - (block.mlp.b_out.float().to(reader.device) * mlp_reader).sum(-1),
                f"L{layer} MLP",
                "mlp",
                layer,
            )
        add(
            (block.mlp.b_out.float().to(reader.device) * mlp_reader).sum(-1),
            f"L{layer} MLP bias",
            "mlp_bias",
            layer,
        )
    bias = model.b_U.float()
    constant = bias[ids[0]] - bias[ids[1]]
    if model.ln_final.b is not None:
        constant = constant + ((unembed[:, ids[0]] - unembed[:, ids[1]]).T * model.ln_final.b.float()).sum(-1)
    add(constant, "norm and unembedding biases", "constant", None)
    return DLAResult(
        values=torch.stack(values).cpu(),
        labels=labels,
        kinds=kinds,
        layers=layers,
        logit_diff=logit_diff.float().cpu(),
        n_layers=arch.n_layers,
        n_heads=arch.n_heads,
    )
