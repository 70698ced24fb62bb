"""LRP propagation rules as a backward pass: the relevance coefficients of RelP.

Relevance patching (RelP; Rezaei Jafari, Eberle, Khakzar and Nanda 2025, "RelP: Faithful
and Efficient Circuit Discovery via Relevance Patching", arXiv 2508.21258) is attribution
patching with the local gradients replaced by Layer-wise Relevance Propagation (LRP)
coefficients. The rules here follow the ones RelP uses for transformers (from CP-LRP, Ali
et al. 2022, and AttnLRP, Achtibat et al. 2024); each is a forward that computes exactly the
model's value but whose backward is the rule's:

- **LN rule** (LayerNorm, RMSNorm, QK-norms, post-norms, the final norm): the scale
  ``sqrt(var + eps)`` is treated as a constant, so the norm is linear in its input.
- **AH rule** (attention; off by default): the attention pattern is treated as a constant,
  so a head is linear in its values; queries and keys get no relevance.
- **Identity rule** (the MLP's activation ``act``): ``act(x)`` passes relevance as if it were
  ``x * (act(x) / x)`` with the ratio constant: the coefficient is the secant slope from 0 to
  ``x``, not the tangent slope ``act'(x)``.
- **Half rule** (the gated MLP's product ``act(gate) * linear``): each factor receives half
  of the product's relevance (its gradient times 0.5).

The default rules are ``DEFAULT_RULES`` (LN, identity, half): the rules the RelP authors'
code (``FarnoushRJ/RelP``) turns on by default and in its patching demo; the AH rule is
implemented there and here, but off unless asked for (``rules=RULES``). With all four rules
every sub-step ``y = f(x)`` satisfies ``J x = y`` for its modified Jacobian ``J`` (norm,
attention-on-values, activation and product are then linear or degree-one in their inputs),
so in a model without biases the relevance ``x . dM/dx`` summed over any layer's residual
stream equals the metric (conservation); biases absorb their share otherwise. Without the
AH rule the softmax keeps its gradient, so queries and keys get coefficients and
conservation is approximate.

These coefficients are exact for a patch that scales an input to zero (degree one), not for
a small change: where both factors of a gated MLP move, the half rule counts half of the
first-order change. Which estimate is closer to real patching depends on the model and
task (README, "Relevance patching"). Each rule sits on the model's own hook point for that sub-step
(``*.hook_scale``, ``attn.hook_pattern``, ``mlp.hook_post``), so every family gets them from
one place. Not covered: soft-capped final logits (Gemma 2's ``tanh`` cap keeps its
gradient).

Example:
    >>> with torch.enable_grad(), relevance_rules(model):
    ...     logits = model(tokens)
    >>> # gradients of anything computed from these logits are now LRP coefficients
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

Hook = tuple[str, Callable]
RULES: tuple[str, ...] = ("ln", "ah", "identity", "half")
"""Every rule: ``ln`` (norm scales constant), ``ah`` (attention patterns constant),
``identity`` (``act(x)/x`` through the MLP activation), ``half`` (a gated MLP's factors share
its relevance). A subset keeps plain gradients elsewhere."""
DEFAULT_RULES: tuple[str, ...] = ("ln", "identity", "half")
"""RelP's default: the rules the authors' code turns on by default (no AH rule)."""


def _constant(value: Tensor, hook) -> Tensor:
    """LN rule / AH rule: the value, with no gradient through it."""
    return value.detach()


def _ratio(act: Callable[[Tensor], Tensor], x: Tensor, value: Tensor) -> Tensor:
    """``act(x) / x`` (0 where ``x`` is too small to divide by), without gradient."""
    x, value = x.detach(), value.detach()
    tiny = x.abs() <= torch.finfo(x.dtype).tiny
    return torch.where(tiny, torch.zeros_like(value), value / torch.where(tiny, torch.ones_like(x), x))


def _mlp_hooks(layer: int, mlp, identity: bool = True, half: bool = True) -> list[Hook]:
    """Identity rule for the activation and half rule for the gate, at ``mlp.hook_post``
    (inputs captured at ``mlp.hook_pre`` and, for gated MLPs, ``mlp.hook_pre_linear``)."""
    seen: dict[str, Tensor] = {}
    prefix = f"blocks.{layer}.mlp"
    if not identity and not (half and mlp.gated):
        return []

    def capture(value: Tensor, hook) -> Tensor:
        seen[hook.name] = value
        return value

    def post(hidden: Tensor, hook) -> Tensor:
        pre = seen.pop(f"{prefix}.hook_pre")
        if identity:  # act(pre) in value, act(pre)/pre in the backward pass
            activated = mlp.act(pre.detach())
            gate = activated + (pre - pre.detach()) * _ratio(mlp.act, pre, activated)
        else:
            gate = mlp.act(pre)
        if not mlp.gated:
            return hidden.detach() + (gate - gate.detach())
        linear = seen.pop(f"{prefix}.hook_pre_linear")
        share = 0.5 if half else 1.0  # half rule: each factor gets half of the product's relevance
        parts = (gate - gate.detach()) * linear.detach() + gate.detach() * (linear - linear.detach())
        return hidden.detach() + share * parts

    hooks = [(f"{prefix}.hook_pre", capture)]
    if mlp.gated:
        hooks.append((f"{prefix}.hook_pre_linear", capture))
    return [*hooks, (f"{prefix}.hook_post", post)]


def relevance_hooks(model, rules: Collection[str] = DEFAULT_RULES) -> list[Hook]:
    """Forward hooks that make a run's backward pass propagate LRP relevance coefficients
    (see the module docstring; ``rules``: a subset of ``RULES``). Register them before any
    hook that reads the values they replace (``model.hooks`` fires a hook point's hooks in
    registration order)."""
    unknown = set(rules) - set(RULES)
    if unknown:
        raise ValueError(f"unknown relevance rules {sorted(unknown)}; choose from {RULES}")
    hooks: list[Hook] = []
    if "ln" in rules:
        hooks += [(name, _constant) for name in model.hook_dict if name.endswith("hook_scale")]
    if "ah" in rules:
        hooks += [(f"blocks.{layer}.attn.hook_pattern", _constant) for layer in range(len(model.blocks))]
    for layer, block in enumerate(model.blocks):
        if getattr(block, "mlp", None) is not None:
            hooks += _mlp_hooks(layer, block.mlp, "identity" in rules, "half" in rules)
    return hooks


@contextmanager
def relevance_rules(model, rules: Collection[str] = DEFAULT_RULES) -> Iterator[None]:
    """Inside the ``with`` block, backward passes through ``model`` propagate LRP relevance
    instead of gradients (forward values are unchanged); ``rules`` picks a subset of
    ``RULES`` (default ``DEFAULT_RULES``; AtP run inside the block is RelP with those rules).

    Example:
        >>> with torch.enable_grad(), relevance_rules(model):
        ...     total = metric(model(tokens)).sum()
        >>> relevance = torch.autograd.grad(total, embeddings)[0] * embeddings
    """
    with model.hooks(fwd_hooks=relevance_hooks(model, rules)):
        yield
