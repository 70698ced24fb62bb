"""Attribution patching: AtP and AtP*, gradient estimates of every patching effect at once.

AtP (Nanda 2023; Syed et al. 2023) estimates the effect of patching activation ``a`` from
the source run into the base run by a first-order Taylor expansion around the base run:
``(a_source - a_base) . dM/da``, for every cell from one forward pass of each run and one
backward pass.

AtP* (Kramár et al. 2024, "AtP*: An efficient and scalable method for localizing LLM
behaviour to components") fixes AtP's two false-negative modes:

- **QK fix** (attention saturation): for query and key sites the attention softmax is
  recomputed exactly with the patched queries/keys, and only the step from the attention
  pattern onwards is linearised: ``sum((pattern_patched - pattern_base) * dM/dpattern)``.
- **GradDrop** (cancellation of direct and indirect effects): ``L`` backward passes, the
  ``l``-th with the gradient flowing into layer ``l``'s attention and MLP outputs set to
  zero (``AtP_l``). For a node inside layer ``l`` (attention or MLP output, head, query,
  key, value, pattern, MLP neuron) every path leaves through those outputs, so its own
  term ``AtP_l`` is zero and the paper's score is ``1/(L-1) * sum_l |AtP_l|``, the mean
  over the ``L-1`` layers that can be dropped. Residual-stream sites (``resid_pre|mid|
  post``; not nodes in the paper) keep their skip connection, so all ``L`` terms count
  and we divide by ``L`` (dividing by ``L-1`` would inflate them by ``L/(L-1)``).
  **Our extension**, not the paper's: the magnitude gets the sign of the plain (QK-fixed)
  estimate, so results stay signed effects; ranking by magnitude is the paper's.

Results hold the estimated *patched metric* (base value + estimated effect), the same
quantity as an exact ``patch_sweep``, so ``normalized()`` and plots mean the same thing.

RelP (``method="relp"``; Rezaei Jafari et al. 2025, arXiv 2508.21258) is AtP with the
gradient replaced by LRP relevance coefficients (``mechinterp.patching.relevance``): norms'
scales held constant, the MLP activation passing ``act(x)/x`` and a gated MLP's product
splitting its relevance in half (``DEFAULT_RULES``). Same cost as AtP. With the AH rule too
(``relp_rules=RULES``: attention patterns constant) no coefficient reaches a query, key or
pattern, so those kinds are refused.

Cost: AtP and RelP are 2 forwards + 1 backward. AtP* is 2 forwards + ``L + 1`` backwards (``L`` =
layers) plus, for each query/key cell, one softmax over that head's attention scores.

Example:
    >>> atp = attribution_patch(model, clean, corrupt, metric, SweepSpec(kind="z", per_position=False))
    >>> exact = patch_sweep(model, clean, corrupt, SweepSpec(kind="z", per_position=False), metric)
    >>> compare(exact, atp).spearman
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Literal

import torch
from torch import Tensor

from mechinterp.dims import AttentionMask
from mechinterp.metrics import MetricFn, PositionalMetric
from mechinterp.patching.engine import CellTable
from mechinterp.patching.relevance import DEFAULT_RULES, relevance_hooks
from mechinterp.patching.result import PatchResult
from mechinterp.patching.scoring import PositionalScorer
from mechinterp.patching.sites import PatchSite, SweepSpec
from mechinterp.patching.sweep import (
    Direction,
    TextOrTokens,
    axis_labels,
    base_and_source,
    make_scorer,
    prepare_pair,
)

Method = Literal["atp", "atp*", "relp"]
METHODS: tuple[str, ...] = ("atp", "atp*", "relp")


def _rotated(kind: str, model) -> str:
    """The hook that holds queries/keys as the scores use them (after rotary, if any)."""
    return f"attn.hook_rot_{kind}" if model.rotary is not None else f"attn.hook_{kind}"


class _GradientRun:
    """The base run with gradients: activations at the needed hooks and the metric total.
    With ``rules`` the backward pass propagates LRP coefficients (RelP with those rules)."""

    def __init__(
        self,
        model,
        tokens: Tensor,
        mask: Tensor,
        hook_names: set[str],
        scorer,
        rules: Collection[str] = (),
    ):
        self.model = model
        self.activations: dict[str, Tensor] = {}
        self.layer_outputs: dict[int, list[Tensor]] = {}
        self.active_drop: int | None = None

        def keep(activation: Tensor, hook) -> Tensor:
            self.activations[hook.name] = activation
            return activation

        def drop_point(layer: int):
            def register(activation: Tensor, hook) -> Tensor:
                activation.register_hook(lambda grad: grad * 0 if self.active_drop == layer else grad)
                return activation

            return register

        def leaf(embedding: Tensor, hook) -> Tensor:  # gradients flow from here, not into the weights
            return embedding.detach().requires_grad_(True)

        relevance = relevance_hooks(model, rules)  # first: later hooks read their values
        hooks = [*relevance, ("hook_embed", leaf), *((name, keep) for name in sorted(hook_names))]
        for layer in range(model.architecture.n_layers):
            for name in ("hook_attn_out", "hook_mlp_out"):
                if f"blocks.{layer}.{name}" in model.hook_dict:  # attention-only models have no MLP
                    hooks.append((f"blocks.{layer}.{name}", drop_point(layer)))
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(tokens, attention_mask=mask)
            values = scorer.run_values(logits)
            self.values = values.detach()
            self.total = _metric_total(scorer, logits)

    def gradients(self, names: list[str], drop_layer: int | None = None) -> dict[str, Tensor]:
        """d(metric total)/d(activation) for ``names``; ``drop_layer`` zeroes the gradient
        entering that layer's attention and MLP outputs (GradDrop)."""
        self.active_drop = drop_layer
        try:
            grads = torch.autograd.grad(
                self.total, [self.activations[n] for n in names], retain_graph=True, allow_unused=True
            )
        finally:
            self.active_drop = None
        home = self.model.device  # blocks may sit on other devices (device_map)
        return {
            n: (g.to(home) if g is not None else torch.zeros_like(self.activations[n], device=home))
            for n, g in zip(names, grads, strict=True)
        }


def _metric_total(scorer, logits: Tensor) -> Tensor:
    """A scalar whose gradient gives every example's metric gradient (examples are independent)."""
    if isinstance(scorer, PositionalScorer):
        rows = torch.arange(logits.shape[0], device=logits.device)
        return scorer.metric.score(logits[rows, scorer.positions.to(logits.device)].float(), rows).sum()
    (fn,) = scorer.metrics.values()
    return torch.as_tensor(fn(logits)).sum()


def _linear_estimates(cells: list[PatchSite], delta: dict[str, Tensor], grads: dict[str, Tensor]) -> Tensor:
    """AtP: ``sum over the cell's slice of (source - base) * gradient``, ``[cell, batch]``,
    for all cells at once (accumulated in float32)."""
    table = CellTable(cells)
    products = torch.stack([delta[name].float() * grads[name].float() for name in table.hooks])
    return table.slice_sums(products)


class _QKFix:
    """Exact attention-pattern change for query/key cells, linearised from the pattern on,
    for all cells of a layer at once. Scores and pattern come from the model's own
    ``Attention.scores`` / ``pattern``.

    A query patched at position ``p`` changes only row ``p`` of its head's pattern, to the
    row computed with the source query, so every query cell is a sum over rows of one
    table per layer. A key patched at position ``p`` changes one score in every row of the
    heads reading it; the row's softmax is then renormalised in closed form (computed in
    log space): with ``P`` the base row and ``a = s'_p - logsumexp(s)``, the new row is
    ``P / r`` off ``p`` and ``exp(a) / r`` at ``p``, ``r = 1 - P_p + exp(a)``. A key patched at
    every position gives the pattern computed with the source keys.
    """

    def __init__(self, model, mask: Tensor, base_rot: dict[str, Tensor], source_rot: dict[str, Tensor]):
        self.model = model
        self.context = model.attention_context(mask)
        self.base, self.source = base_rot, source_rot
        self.group = model.architecture.heads_per_kv_head

    def estimates(self, cells: list[PatchSite], grads: dict[str, Tensor]) -> Tensor:
        """``[cell, batch]`` estimated metric changes (float32)."""
        table = CellTable(cells)
        per_position, whole = [], []
        for hook in table.hooks:
            layer = int(hook.split(".")[1])
            changes = self._changes(layer, table.kind, grads[f"blocks.{layer}.attn.hook_pattern"].float())
            per_position.append(changes[0])
            whole.append(changes[1])
        sums = table.slice_sums(torch.stack(per_position))
        if table.kind == "q":
            return sums
        every_position = table.coords[:, table.position_axis] < 0
        return torch.where(
            every_position[:, None].to(sums.device), table.slice_sums(torch.stack(whole)), sums
        )

    def _changes(self, layer: int, kind: str, grad: Tensor) -> tuple[Tensor, Tensor]:
        """Per layer, ``[batch, pos, head, 1]`` tables whose cell slices sum to the estimates:
        one for single positions, one (keys only) for all positions at once (position 0
        holds the value)."""
        attn = self.model.blocks[layer].attn
        q_name = f"blocks.{layer}.{_rotated('q', self.model)}"
        k_name = f"blocks.{layer}.{_rotated('k', self.model)}"
        q, k = self.base[q_name], self.base[k_name]
        base_scores = attn.scores(q, k, self.context).float()  # [batch, head, q, k]
        base = base_scores.softmax(-1)
        kept = (base * grad).sum(-1)  # [batch, head, q]: sum_k P_k G_k
        if kind == "q":
            patched = attn.pattern(attn.scores(self.source[q_name], k, self.context)).float()
            rows = ((patched - base) * grad).sum(-1)  # [batch, head, q]
            return rows.transpose(1, 2)[..., None], rows.transpose(1, 2)[..., None]
        # the closed-form renormalisation runs in float64: it equals a recomputed softmax
        # to float32 rounding
        source_scores = attn.scores(q, self.source[k_name], self.context).double()
        base_scores, base, grad, kept = base_scores.double(), base.double(), grad.double(), kept.double()
        log_total = base_scores.logsumexp(-1, keepdim=True)
        shifted = source_scores - log_total  # log of the patched key's new unnormalised weight
        allowed = self.context.allowed.expand_as(base)  # [batch, 1, q, k] -> per head
        shifted = shifted.masked_fill(~allowed, float("-inf"))
        log_r = torch.logaddexp(torch.log1p(-base.clamp(max=1 - 1e-7)), shifted)
        new_p = (shifted - log_r).exp()
        change = (kept[..., None] - base * grad) * (-log_r).exp() + new_p * grad - kept[..., None]
        change = change.masked_fill(~allowed, 0).sum(2)  # [batch, head, key position]
        everywhere = (
            (attn.pattern(attn.scores(q, self.source[k_name], self.context)).float() - base) * grad
        ).sum((2, 3))  # [batch, head]
        batch, heads, n_pos = change.shape
        per_kv = change.view(batch, heads // self.group, self.group, n_pos).sum(2).transpose(1, 2)
        whole = everywhere.view(batch, heads // self.group, self.group).sum(2)
        whole_table = per_kv.new_zeros(per_kv.shape)
        whole_table[:, 0] = whole
        return per_kv[..., None].float(), whole_table[..., None].float()


RESIDUAL_KINDS = frozenset({"resid_pre", "resid_mid", "resid_post"})


def _grad_drop_magnitude(estimate: Callable[[int], Tensor], n_layers: int, kind: str) -> Tensor:
    """GradDrop's magnitude: the mean of ``|AtP_l|`` over the layers whose drop can leave
    an estimate standing. Inside a layer the own-layer term is zero by construction, so the
    mean is over ``L-1`` layers (the paper's ``1/(L-1)``); residual-stream sites keep all ``L``."""
    counted = n_layers if kind in RESIDUAL_KINDS else n_layers - 1
    return sum(estimate(layer).abs() for layer in range(n_layers)) / max(counted, 1)


@torch.no_grad()
def attribution_patch(
    model,
    clean: TextOrTokens,
    corrupt: TextOrTokens,
    metric: PositionalMetric | MetricFn,
    spec: SweepSpec,
    *,
    method: str = "atp",  # one of METHODS (checked below, with a clearer message than a type check)
    grad_drop: bool = True,
    direction: Direction = "denoise",
    attention_mask: AttentionMask | None = None,
    relp_rules: Collection[str] = DEFAULT_RULES,
) -> PatchResult:
    """Estimate every cell of ``spec`` by attribution patching (see the module docstring).

    Arguments mean what they mean in ``patch_sweep``; the result has the same axes, labels
    and layout, so exact and estimated maps can be compared (``compare``) and plotted side
    by side. ``method="atp*"`` applies the QK fix to query/key sites and, unless
    ``grad_drop=False``, GradDrop; ``method="relp"`` uses LRP relevance coefficients in place
    of gradients (RelP with ``relp_rules``, a subset of ``relevance.RULES``; with ``"ah"``
    not for query, key or pattern sites). The metric may be positional or any callable on
    logits returning a scalar or per-example values.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "relp" and "ah" in relp_rules and spec.kind in ("q", "k", "pattern"):
        raise ValueError(
            f"the AH rule treats the attention pattern as a constant, so {spec.kind!r} sites get no "
            "relevance; leave 'ah' out of relp_rules or use method='atp*' for queries, keys and patterns"
        )
    clean_tokens, corrupt_tokens, mask = prepare_pair(model, clean, corrupt, attention_mask)
    base, source = base_and_source(clean_tokens, corrupt_tokens, direction)
    grid = spec.enumerate(model, base.shape[1])
    scorer = make_scorer(metric, model, base, mask)
    qk_cells = method == "atp*" and spec.kind in ("q", "k")
    names = {site.hook_name for site in grid.cells}
    rot_names = set()
    if qk_cells:
        for layer in {site.layer for site in grid.cells}:
            rot_names |= {f"blocks.{layer}.{_rotated(kind, model)}" for kind in ("q", "k")}
            names.add(f"blocks.{layer}.attn.hook_pattern")
    source_logits, source_cache = model.run_with_cache(
        source, attention_mask=mask, names_filter=list(names | rot_names)
    )
    run = _GradientRun(model, base, mask, names | rot_names, scorer, relp_rules if method == "relp" else ())
    delta = {n: source_cache[n] - run.activations[n].detach().to(source_cache[n].device) for n in names}
    grad_names = sorted(names)

    def estimates(drop_layer: int | None) -> Tensor:
        grads = run.gradients(grad_names, drop_layer)
        if not qk_cells:
            return _linear_estimates(grid.cells, delta, grads)
        fix = _QKFix(
            model,
            mask,
            {n: run.activations[n].detach().to(model.device) for n in rot_names},
            {n: source_cache[n] for n in rot_names},
        )
        return fix.estimates(grid.cells, grads)

    values = estimates(None)
    if method == "atp*" and grad_drop:
        magnitude = _grad_drop_magnitude(estimates, model.architecture.n_layers, spec.kind)
        values = torch.where(values < 0, -magnitude, magnitude)
    per_example = scorer.per_example
    if not per_example:  # scalar metrics: the estimate of the scalar is the sum over examples
        values = values.sum(-1)
    values = values.reshape(*grid.shape, *values.shape[1:]).cpu()
    source_value = scorer.run_values(source_logits)
    base_value = run.values.float().cpu()
    return PatchResult(
        values=values + base_value,
        axes=grid.axes,
        labels=axis_labels(model, grid, clean_tokens),
        base=base_value,
        source=source_value,
        per_example=per_example,
        metadata={
            "kind": spec.kind,
            "direction": direction,
            "ablation": "resample",
            "method": method if method != "atp*" or grad_drop else "atp* (no GradDrop)",
            "model": model.architecture.model_name,
            "metric": type(metric).__name__,
            "examples": int(base.shape[0]),
            **({"relp_rules": sorted(relp_rules)} if method == "relp" else {}),
        },
    )
