"""SAE latents in everyday analyses: ablation, steering, direct logit effects, top features.

Patching and attribution over latents use the existing entry points with ``sae_*`` site
kinds while the SAE is spliced (``SweepSpec(kind="sae_resid_post", per_feature=True)``):

    >>> with model.saes([sae], use_error_term=True):
    ...     exact = patch_sweep(model, clean, corrupt, spec, metric)
    ...     estimate = attribution_patch(model, clean, corrupt, metric, spec)

This module adds what has no counterpart among neurons and heads:

- ``ablate_features``: zero chosen latents (the error term stays fixed, so only their
  contribution is removed);
- ``steer``: add ``alpha * W_dec[i]`` to the hook's activation (Templeton et al. 2024);
- ``feature_logit_effects``: each decoder direction read through the final norm's weight
  and the unembedding (``W_dec[i] * w_ln @ W_U``), the tokens a latent promotes or suppresses
  directly; ``feature_dla``: per prompt, each latent's direct contribution to a logit
  difference with the final norm's scale frozen at its value on the run (as in ``lens.dla``);
- ``top_features``: the most active latents of each prompt.

Example:
    >>> with steer(model, sae, feature=123, alpha=8.0):
    ...     print(model.generate("I think that", max_new_tokens=10))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechinterp.dims import AttentionMask, Tokens
from mechinterp.metrics import last_positions
from mechinterp.models.tokenization import TextInput
from mechinterp.sae.model import SAE


def _tokens(model, input: TextInput | Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    if isinstance(input, (str, list)):
        return model.encode(input)
    mask = torch.ones_like(input) if attention_mask is None else attention_mask
    return input.to(model.device), mask.to(model.device)


def _check_features(sae: SAE, features: Sequence[int] | Tensor) -> Tensor:
    index = torch.as_tensor(features, dtype=torch.long).reshape(-1)
    if index.numel() and (index.min() < 0 or index.max() >= sae.cfg.d_sae):
        raise ValueError(f"features must lie in [0, {sae.cfg.d_sae}); got {index.tolist()}")
    return index.to(sae.device)


@contextmanager
def spliced(model, sae: SAE, *, use_error_term: bool = True) -> Iterator[None]:
    """Splice ``sae`` unless it already is (then leave the splice as it is)."""
    point = model.hook_dict.get(sae.cfg.splice_hook)
    if getattr(point, "spliced_sae", None) is sae:
        yield
        return
    with model.saes([sae], use_error_term=use_error_term):
        yield


@contextmanager
def ablate_features(model, sae: SAE, features: Sequence[int], *, value: float = 0.0) -> Iterator[None]:
    """Set ``features`` of ``sae`` to ``value`` (default zero) at every position; splices the
    SAE with its error term if it is not spliced already.

    Example:
        >>> with ablate_features(model, sae, [12, 40]):
        ...     logits = model(tokens)
    """
    index = _check_features(sae, features)

    def ablate(acts: Tensor, hook) -> Tensor:
        acts = acts.clone()
        acts[..., index] = value
        return acts

    with ExitStack() as stack:
        stack.enter_context(spliced(model, sae))
        stack.enter_context(model.hooks(fwd_hooks=[(f"{sae.cfg.splice_hook}.hook_sae_acts_post", ablate)]))
        yield


@contextmanager
def steer(
    model, sae: SAE, feature: int, alpha: float, *, positions: Sequence[int] | None = None
) -> Iterator[None]:
    """Add ``alpha * W_dec[feature]`` to the activation at ``sae``'s (output) hook, at every
    position or at ``positions``. Needs no splicing: the rest of the activation is untouched.

    Example:
        >>> with steer(model, sae, feature=7, alpha=10.0):
        ...     model.generate("My favourite food is", max_new_tokens=8)
    """
    (index,) = _check_features(sae, [feature]).tolist()
    direction = sae.W_dec[index].detach()

    def add(activation: Tensor, hook) -> Tensor:
        shift = (alpha * direction).to(activation.dtype).reshape(activation.shape[2:])
        if positions is None:
            return activation + shift
        activation = activation.clone()
        activation[:, list(positions)] += shift
        return activation

    with model.hooks(fwd_hooks=[(sae.cfg.splice_hook, add)]):
        yield


def _logit_reader(model) -> Tensor:
    """``[d_model, d_vocab]``: how a residual direction moves the logits through the final
    norm's weight (and its centring, for LayerNorm) and the unembedding, scale excluded."""
    reader = model.ln_final.w[:, None] * model.W_U
    if model.architecture.norm == "layernorm":
        reader = reader - reader.mean(0, keepdim=True)
    return reader


def _check_residual_writer(model, sae: SAE) -> None:
    if sae.cfg.width_out != model.architecture.d_model:
        raise ValueError(
            f"direct logit effects need decoder rows in the residual stream (width "
            f"{model.architecture.d_model}); {sae.cfg.splice_hook} has width {sae.cfg.width_out}"
        )


@torch.no_grad()
def feature_logit_effects(
    model, sae: SAE, features: Sequence[int] | None = None
) -> Float[Tensor, "_d_sae d_vocab"]:
    """``[feature, d_vocab]``: ``W_dec[i]`` through the final norm's weight and ``W_U`` (the
    direct effect of one unit of latent ``i`` on each logit, up to the norm's scale).

    Example:
        >>> effects = feature_logit_effects(model, sae, [5])
        >>> model.to_str_tokens(effects[0].topk(10).indices)     # promoted tokens
    """
    _check_residual_writer(model, sae)
    index = _check_features(sae, range(sae.cfg.d_sae) if features is None else features)
    return (sae.W_dec[index].to(model.dtype) @ _logit_reader(model)).float()


@torch.no_grad()
def feature_dla(
    model,
    sae: SAE,
    input: TextInput | Tokens,
    *,
    correct: list[str] | Int[Tensor, " batch"],
    incorrect: list[str] | Int[Tensor, " batch"],
    positions: Int[Tensor, " batch"] | None = None,
    attention_mask: AttentionMask | None = None,
) -> Float[Tensor, "batch d_sae"]:
    """``[batch, d_sae]``: each latent's direct contribution ``acts_i * W_dec[i] . reader``
    to ``logit[correct] - logit[incorrect]`` at each example's position (default: last real
    token), with the final norm's scale frozen at its value on the run (with the SAE
    spliced and its error term, so the run is the model's own)."""
    _check_residual_writer(model, sae)
    tokens, mask = _tokens(model, input, attention_mask)
    ids = []
    for answers in (correct, incorrect):
        answers = (
            answers
            if isinstance(answers, Tensor)
            else torch.tensor([model.to_single_token(a) for a in answers])
        )
        if answers.shape != (tokens.shape[0],):
            raise ValueError(
                f"need one answer per example ({tokens.shape[0]}), got shape {tuple(answers.shape)}"
            )
        ids.append(answers.to(model.device))
    positions = last_positions(mask) if positions is None else positions.to(model.device)
    acts_name = f"{sae.cfg.splice_hook}.hook_sae_acts_post"
    with spliced(model, sae):
        _, cache = model.run_with_cache(
            tokens, attention_mask=mask, names_filter=[acts_name, "ln_final.hook_scale"]
        )
    rows = torch.arange(tokens.shape[0], device=model.device)
    reader = _logit_reader(model)
    direction = (reader[:, ids[0]] - reader[:, ids[1]]).T / cache["ln_final.hook_scale"][rows, positions]
    per_latent = sae.W_dec.to(model.dtype) @ direction.T  # [d_sae, batch]
    return (cache[acts_name][rows, positions] * per_latent.T).float().cpu()


@dataclass(frozen=True)
class TopFeatures:
    """Per example: the ``k`` most active latents (``indices``, ``values``: ``[batch, k]``),
    at ``positions`` (max over positions when ``None``)."""

    indices: Int[Tensor, "batch top"]
    values: Float[Tensor, "batch top"]
    positions: Int[Tensor, " batch"] | None


@torch.no_grad()
def top_features(
    model,
    sae: SAE,
    input: TextInput | Tokens,
    *,
    k: int = 10,
    positions: Int[Tensor, " batch"] | str | None = "last",
    attention_mask: AttentionMask | None = None,
) -> TopFeatures:
    """The ``k`` most active latents of each prompt at its last real token (``positions=
    "last"``), at given ``positions`` ``[batch]``, or at any real position (``None``: the
    maximum over positions).

    Example:
        >>> top = top_features(model, sae, ["The Eiffel Tower is in"], k=5)
        >>> top.indices[0], top.values[0]
    """
    tokens, mask = _tokens(model, input, attention_mask)
    acts_name = f"{sae.cfg.splice_hook}.hook_sae_acts_post"
    with spliced(model, sae):
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=[acts_name])
    acts = cache[acts_name]
    if isinstance(positions, str):
        if positions != "last":
            raise ValueError(f"positions must be 'last', None or a [batch] tensor, got {positions!r}")
        positions = last_positions(mask)
    if positions is None:
        per_example = acts.masked_fill(~mask.bool()[..., None], float("-inf")).amax(1)
    else:
        positions = positions.to(acts.device)
        per_example = acts[torch.arange(acts.shape[0], device=acts.device), positions]
    values, indices = per_example.topk(min(k, sae.cfg.d_sae), dim=-1)
    return TopFeatures(indices.cpu(), values.float().cpu(), None if positions is None else positions.cpu())
