"""``attribute_tokens``: which input tokens (or which activations at a hook) drove a prediction.

Example:
    >>> a = attribute_tokens(model, "The Eiffel Tower is in the city of", correct=" Paris", steps=64)
    >>> a.values.shape, a.completeness.max_gap
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Int, Shaped
from torch import Tensor

from mechinterp.data.pairs import PromptPairs
from mechinterp.models.tokenization import token_labels
from mechinterp.token_attribution.gradients import input_gradients, integrated_gradients, objective_at
from mechinterp.token_attribution.inputs import (
    Answer,
    AttributionInput,
    Baseline,
    Target,
    answer_positions,
    baseline_tokens,
    objective_for,
    prompt_tokens,
    warn_zero_baseline,
)
from mechinterp.token_attribution.occlusion import occlusion
from mechinterp.token_attribution.result import Completeness, MethodComparison, TokenAttribution
from mechinterp.token_attribution.rollout import attention_rollout
from mechinterp.token_attribution.rules import IntegrationRule, integration_points
from mechinterp.token_attribution.runner import SiteRunner, frozen_parameters

Method = Literal["integrated_gradients", "gradient_x_input", "saliency", "occlusion", "attention_rollout"]
METHODS: tuple[str, ...] = Method.__args__
BASELINE_METHODS = ("integrated_gradients", "occlusion")
DEFAULT_STEPS = 64
AUTO_START_STEPS = 32
MAX_AUTO_STEPS = 1024
DEFAULT_TOLERANCE = 0.05


def attribute_tokens(
    model,
    input: AttributionInput,
    *,
    correct: Answer | None = None,
    incorrect: Answer | None = None,
    method: Method = "integrated_gradients",
    steps: int | Literal["auto"] | None = None,
    baseline: Baseline | None = None,
    positions: Sequence[int] | Int[Tensor, " _batch"] | None = None,
    attention_mask: Shaped[Tensor, "*batch pos"] | None = None,
    target: Target = "logit",
    tolerance: float = DEFAULT_TOLERANCE,
    max_steps: int = MAX_AUTO_STEPS,
    rule: IntegrationRule | None = None,
    layer: str | None = None,
    max_batch_rows: int | Literal["auto"] = "auto",
    max_memory: int | None = None,
) -> TokenAttribution:
    """Score each input token (or each position of the activation at hook ``layer``) for the
    objective: ``logit[correct]``, ``logit[correct] - logit[incorrect]``, or with
    ``target="continuation"`` the summed log-probability of a continuation (minus that of
    the ``incorrect`` one).

    Args:
        model: a ``HookedLM``.
        input: text, a list of texts (padded on the left), token ids ``[batch, pos]`` (with
            ``attention_mask`` for padding on either side), or ``PromptPairs`` (clean prompts,
            their answers and positions; the baseline defaults to the corrupt prompts).
        correct, incorrect: answers: a string, a token id, one per example, or a tensor.
            With ``target="logit"`` each must be one token; with ``"continuation"`` any length.
        method: ``integrated_gradients`` (default), ``gradient_x_input``, ``saliency``
            (gradient L2 norm), ``occlusion`` (leave one out: replace one position by the
            baseline's), ``attention_rollout`` (Abnar & Zuidema 2020; needs no answer).
        steps: integrated gradients' gradient evaluations (default 64), or ``"auto"``: start
            at 32 and double until the completeness gap (``|sum of attributions - (f(x) -
            f(baseline))| / |f(x) - f(baseline)|``, worst example) is at most ``tolerance``
            or ``max_steps`` (default 1024) is reached; ``metadata["steps"]`` says how many
            were used. Either way a gap above ``tolerance`` (default 0.05) warns, naming the
            steps and the baseline: the attributions then do not add up to the change they
            claim to explain (on SmolLM2 the pad baseline needs hundreds of steps; see the
            README's table).
        baseline: ``"pad"`` (default; the pad token at every real position), a token id,
            ``"zero"`` (zero activations; warns on RMSNorm models), or a corrupt prompt of
            the same length (text, texts or token ids). Used by integrated gradients (path
            start) and occlusion (replacement).
        positions: each example's answer position (default: its last real token).
        rule: ``gauss_legendre`` (default), ``riemann_left|right|middle|trapezoid``.
        layer: attribute to the activation at this hook instead of the input embeddings
            (``blocks.3.hook_resid_pre``: per position; ``blocks.3.attn.hook_z`` or
            ``hook_result``: per position and head).
        max_batch_rows, max_memory: rows (example x step, or occluded copies) per batched
            pass; ``"auto"`` fits ``max_memory`` bytes (default half the free memory).

    Raises:
        ValueError: steps < 1, a baseline of another length, a multi-token ``correct`` with
            ``target="logit"``, an option the method does not use, and the like.

    Example:
        >>> a = attribute_tokens(model, ["The Eiffel Tower is in the city of"], correct=" Paris",
        ...                      incorrect=" London", method="integrated_gradients", steps=32)
        >>> a.values[0]          # one score per token, summing to f(x) - f(pad baseline)
        >>> attribute_tokens(model, pairs, method="occlusion")   # PromptPairs: corrupt tokens replace
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(input, PromptPairs):  # clean prompts; answers, positions and baseline from the pairs
        pairs, input = input, input.clean
        attention_mask = pairs.attention_mask if attention_mask is None else attention_mask
        correct = pairs.correct if correct is None else correct
        incorrect = pairs.incorrect if incorrect is None else incorrect
        positions = pairs.positions if positions is None and target == "logit" else positions
        if baseline is None and method in BASELINE_METHODS:
            baseline = pairs.corrupt
    if method == "integrated_gradients":
        rule = rule or "gauss_legendre"
        steps = DEFAULT_STEPS if steps is None else steps
        if steps != "auto":
            integration_points(rule, steps)  # checks steps before any work
    else:
        for name, value in (("steps", steps), ("rule", rule)):
            if value is not None:
                raise ValueError(f"{name}= only applies to integrated_gradients, not {method}")
        if (tolerance, max_steps) != (DEFAULT_TOLERANCE, MAX_AUTO_STEPS):
            raise ValueError(f"tolerance= and max_steps= only apply to integrated_gradients, not {method}")
    if method not in BASELINE_METHODS and baseline is not None:
        raise ValueError(f"{method} uses no baseline; baselines go with integrated_gradients and occlusion")
    tokens, mask = prompt_tokens(model, input, attention_mask)
    metadata = {"model": model.architecture.model_name, "target": target}
    if method == "attention_rollout":
        if layer is not None:
            raise ValueError("attention_rollout follows attention through every layer; layer= does not apply")
        found = rollout_positions(target, positions, mask)
        values = attention_rollout(model, tokens, mask, found)
        metadata["positions"] = found.tolist()
        return _result(model, values, tokens, mask, method, "blocks.*.attn.hook_pattern", metadata)
    if correct is None:
        raise ValueError(f"{method} explains an answer: pass correct= (and optionally incorrect=)")
    objective, found = objective_for(model, target, correct, incorrect, positions, mask)
    site = layer or "hook_embed"
    metadata |= {"objective": objective.describe(model), "positions": found.tolist(), "site": site}
    with frozen_parameters(model):
        runner = SiteRunner(model, tokens, mask, objective, site)
        actual = runner.capture(tokens)
        backward = method in ("integrated_gradients", "gradient_x_input", "saliency")
        chunk = runner.rows_per_chunk(max_batch_rows, max_memory, backward=backward)
        if method in ("gradient_x_input", "saliency"):
            gradient, score = input_gradients(runner, actual, chunk)
            values = (actual * gradient).sum(-1) if method == "gradient_x_input" else gradient.norm(dim=-1)
            values = values * mask.reshape(*mask.shape, *[1] * (values.ndim - 2))
            return _result(model, values, tokens, mask, method, site, metadata, score=score)
        start, described = baseline_tokens(model, "pad" if baseline is None else baseline, tokens, mask)
        metadata["baseline"] = described
        if start is None:
            warn_zero_baseline(model, site)
            reference = torch.zeros_like(actual)
        else:
            reference = runner.capture(start)
        keep = mask.bool().reshape(*mask.shape, *[1] * (actual.ndim - 2))
        reference = torch.where(keep, reference, actual)  # padding does not move
        if method == "occlusion":
            score = objective_at(runner, actual, chunk)
            values = occlusion(runner, actual, reference, mask, score, chunk)
            return _result(model, values, tokens, mask, method, site, metadata, score=score)
        path, completeness, used = _converged_path(
            runner, actual, reference, chunk, rule, steps, tolerance, max_steps, described
        )
        metadata |= {"steps": used, "rule": rule}
        return _result(
            model,
            path.values,
            tokens,
            mask,
            method,
            site,
            metadata,
            score=path.score,
            completeness=completeness,
        )


def _converged_path(runner, actual, reference, chunk, rule, steps, tolerance, max_steps, baseline):
    """Integrated gradients with ``steps`` points, or with ``"auto"`` doubling from
    ``AUTO_START_STEPS`` until the worst completeness gap is within ``tolerance`` (or
    ``max_steps``); warns if the gap it ends with is above ``tolerance``."""
    n = AUTO_START_STEPS if steps == "auto" else steps
    while True:
        alphas, weights = integration_points(rule, n)
        path = integrated_gradients(runner, actual, reference, alphas, weights, chunk)  # zero at padding
        completeness = Completeness(path.values.flatten(1).sum(1), path.score - path.baseline_score)
        gap = worst_gap(completeness)
        if steps != "auto" or gap <= tolerance or n * 2 > max_steps:
            break
        n *= 2
    if gap > tolerance:
        how = (
            f"steps='auto' stopped at max_steps={max_steps}"
            if steps == "auto"
            else "use steps='auto', more steps"
        )
        warnings.warn(
            f"integrated gradients did not converge: the attributions miss f(x) - f(baseline) by "
            f"{gap:.1%} (worst example; tolerance {tolerance:.0%}) with {n} steps ({rule}) from baseline "
            f"{baseline}; {how}, or a baseline closer to the input (e.g. a corrupt prompt)",
            stacklevel=3,
        )
    return path, completeness, n


def worst_gap(completeness: Completeness) -> float:
    """The largest relative completeness gap over examples whose input and baseline score
    differently (0 when none does)."""
    gaps = completeness.gap[completeness.change != 0]
    return float(gaps.max()) if gaps.numel() else 0.0


def rollout_positions(target: Target, positions: Sequence[int] | Tensor | None, mask: Tensor) -> Tensor:
    """Where rollout reads: the answer position (a continuation: the prompt's last token)."""
    if target == "continuation":
        if positions is not None:
            raise ValueError("a continuation starts after the prompt's last token; positions= does not apply")
        return torch.full((mask.shape[0],), mask.shape[1] - 1, dtype=torch.long, device=mask.device)
    return answer_positions(positions, mask)


def _result(
    model,
    values: Tensor,
    tokens: Tensor,
    mask: Tensor,
    method: str,
    site: str,
    metadata: dict,
    *,
    score: Tensor | None = None,
    completeness: Completeness | None = None,
) -> TokenAttribution:
    labels = [token_labels(model.tokenizer, row.tolist()) for row in tokens]  # no tokenizer: <id N>
    return TokenAttribution(
        values=values.detach().float().cpu(),
        tokens=labels,
        token_ids=tokens.cpu(),
        attention_mask=mask.cpu(),
        method=method,
        site=site,
        score=None if score is None else score.detach().float().cpu(),
        completeness=completeness,
        metadata=metadata,
    )


def compare_methods(
    model,
    input: AttributionInput,
    *,
    methods: Sequence[Method] = (
        "integrated_gradients",
        "gradient_x_input",
        "occlusion",
        "attention_rollout",
    ),
    steps: int | Literal["auto"] | None = None,
    rule: IntegrationRule | None = None,
    baseline: Baseline | None = None,
    **arguments,
) -> MethodComparison:
    """Run several methods on the same input and objective, side by side.

    ``steps``, ``rule``, ``tolerance`` and ``max_steps`` go to integrated gradients, ``baseline`` to the methods that
    take one (integrated gradients, occlusion); every other keyword goes to all methods.

    Example:
        >>> comparison = compare_methods(model, "The Eiffel Tower is in the city of", correct=" Paris")
        >>> comparison.agreement()              # Spearman correlations, methods x methods
        >>> method_comparison_heatmap(comparison).show()     # from mechinterp.plotting
    """
    ig_only = {name: arguments.pop(name) for name in ("tolerance", "max_steps") if name in arguments}
    found = {}
    for method in methods:
        extra = {}
        if method == "integrated_gradients":
            extra = {"steps": steps, "rule": rule} | ig_only
        if method in BASELINE_METHODS:
            extra["baseline"] = baseline
        found[method] = attribute_tokens(model, input, method=method, **extra, **arguments)
    return MethodComparison(found)
