"""RelP (relevance patching): LRP rules in the backward pass, node and edge level."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

import mechinterp
from circuits import ALGORITHMS, CONFIGS, Graph, PairedData, eap_scores, relp_scores
from mechinterp.metrics import LogitDifference
from mechinterp.models.tiny import tiny_hf_model
from mechinterp.patching import SweepSpec, attribution_patch, relevance_rules
from mechinterp.patching.engine import site_index
from mechinterp.patching.relevance import DEFAULT_RULES, RULES


@functools.cache
def tiny(family: str, **overrides):
    hf_model, tokenizer = tiny_hf_model(family, **overrides)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


def pair():
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(3, 98, (2, 7), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 2] = 9
    corrupt[:, 4] = 11
    metric = LogitDifference.last_position(
        torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8], reduce="none"
    )
    return clean, corrupt, metric


@torch.no_grad()
def frozen_exact(model, clean, corrupt, spec, metric):
    """Exact patching (the clean run, corrupt values patched in) of the model whose norm scales and attention patterns are frozen at
    the clean run's values (one forward per cell; literal hooks, no RelP code)."""
    frozen_names = [n for n in model.hook_dict if n.endswith("hook_scale") or n.endswith("hook_pattern")]
    _, base_cache = model.run_with_cache(clean, names_filter=frozen_names)
    _, source_cache = model.run_with_cache(corrupt)
    frozen = [(n, lambda value, hook, kept=base_cache[n]: kept.clone()) for n in frozen_names]
    rows = torch.arange(clean.shape[0])
    values = []
    for site in spec.enumerate(model, clean.shape[1]).cells:
        index = (slice(None), *site_index(site))

        def patch(activation, hook, index=index, source=source_cache[site.hook_name]):
            activation[index] = source[index]
            return activation

        logits = model.run_with_hooks(clean, fwd_hooks=[*frozen, (site.hook_name, patch)])
        values.append(metric.score(logits[rows, metric.positions], rows))
    return torch.stack(values)


@pytest.mark.parametrize(
    "spec",
    [
        SweepSpec(kind="mlp_out"),
        SweepSpec(kind="z", per_position=False),
        SweepSpec(kind="resid_pre"),
        SweepSpec(kind="v", per_position=False),
    ],
    ids=lambda s: s.kind,
)
def test_relp_is_exact_where_the_rules_make_the_model_linear(spec):
    """A GPT-2 (LayerNorm with biases) whose MLP activation is the identity: with norm scales
    and attention patterns frozen the model is affine in every activation, and the
    coefficients of all four rules are that affine map's, so RelP equals exact patching of it."""
    model = tiny("gpt2", activation_function="linear")
    clean, corrupt, metric = pair()
    relp = attribution_patch(
        model, clean, corrupt, metric, spec, method="relp", direction="noise", relp_rules=RULES
    )
    exact = frozen_exact(model, clean, corrupt, spec, metric)
    estimated = relp.values.reshape(exact.shape)
    torch.testing.assert_close(estimated, exact, atol=1e-4 * float(exact.abs().max()), rtol=1e-4)
    atp = attribution_patch(model, clean, corrupt, metric, spec, method="atp", direction="noise")
    # plain gradients see the norms move: AtP is not exact
    assert (atp.values.reshape(exact.shape) - exact).abs().max() > 1e-3 * exact.abs().max()


def relevance_at(model, tokens, metric, names, rules=DEFAULT_RULES):
    """``(metric total, {name: (activation, coefficient)})`` from one backward pass."""
    kept = {}

    def keep(value, hook):
        kept[hook.name] = value
        return value

    def leaf(value, hook):
        return value.detach().requires_grad_(True)

    rows = torch.arange(tokens.shape[0])
    hooks = [("hook_embed", leaf), *((n, keep) for n in names)]
    rules_or_not = relevance_rules(model, rules) if rules else contextlib.nullcontext()
    with torch.enable_grad():
        with rules_or_not, model.hooks(fwd_hooks=hooks):
            logits = model(tokens)
            total = metric.score(logits[rows, metric.positions], rows).sum()
        grads = torch.autograd.grad(total, [kept[n] for n in names])
    return total.detach(), {n: (kept[n].detach(), g) for n, g in zip(names, grads, strict=True)}


@pytest.mark.parametrize("family", ["llama", "olmo2"])
def test_relevance_is_conserved_layer_by_layer(family):
    """Without biases (Llama: gated SiLU MLP, RMSNorm, rotary; OLMo 2: post-norms, QK-norm)
    the relevance ``x . R(x)`` of all four rules, at every layer's residual stream and at the
    embeddings, sums to the metric; plain gradient x input and the default rules (the
    softmax keeps its gradient) do not."""
    model = tiny(family)
    biases = [p for name, p in model.named_parameters() if name.split(".")[-1].startswith("b")]
    assert all(not bool(p.any()) for p in biases), "the check needs a model without biases"
    clean, _, metric = pair()
    names = [
        "hook_embed",
        *(f"blocks.{layer}.hook_resid_pre" for layer in range(2)),
        "blocks.1.hook_resid_post",
    ]
    total, relevance = relevance_at(model, clean, metric, names, rules=RULES)
    for activation, coefficient in relevance.values():
        torch.testing.assert_close(
            (activation * coefficient).sum(), total, atol=1e-4 * total.abs(), rtol=1e-4
        )
    for rules in ((), DEFAULT_RULES):
        total, plain = relevance_at(model, clean, metric, ["hook_embed"], rules=rules)
        activation, gradient = plain["hook_embed"]
        assert ((activation * gradient).sum() - total).abs() > 1e-3 * total.abs()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_mlp_rules_identity_and_half(family):
    """The activation passes ``act(x)/x`` (identity rule: the secant from 0, not the tangent
    ``act'(x)``, so relevance through it is conserved and a patch of its input to zero is
    estimated exactly); a gated MLP's two factors each get half of the product's relevance."""
    model = tiny(family)
    mlp = model.blocks[0].mlp
    clean, _, metric = pair()
    names = ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post"]
    if mlp.gated:
        names.insert(1, "blocks.0.mlp.hook_pre_linear")
    _, relevance = relevance_at(model, clean, metric, names)
    pre, pre_coefficient = relevance[names[0]]
    post, post_coefficient = relevance[names[-1]]
    activated = mlp.act(pre)
    share = 0.5 if mlp.gated else 1.0
    # identity rule: gradient through the activation is act(x)/x (times the other factor)
    other = relevance[names[1]][0] if mlp.gated else 1.0
    torch.testing.assert_close(pre_coefficient, share * post_coefficient * other * activated / pre)
    out_relevance = (post * post_coefficient).sum()
    if mlp.gated:  # half rule: each factor carries half of the product's relevance
        linear, linear_coefficient = relevance[names[1]]
        torch.testing.assert_close((pre * pre_coefficient).sum(), out_relevance / 2)
        torch.testing.assert_close((linear * linear_coefficient).sum(), out_relevance / 2)
    else:  # patching the activation's input to 0 is estimated exactly: -act(x) . upstream
        torch.testing.assert_close(-(pre * pre_coefficient).sum(), -(activated * post_coefficient).sum())
        _, plain = relevance_at(model, clean, metric, names, rules=())
        tangent = -(pre * plain[names[0]][1]).sum()  # AtP's estimate of the same patch
        assert (tangent + (activated * post_coefficient).sum()).abs() > 1e-3 * out_relevance.abs()


def test_relp_differs_from_atp_only_where_rules_apply():
    """On MLP outputs of the last layer (nothing nonlinear after them but the final norm)
    RelP and AtP differ only by the final norm's rule; on a gated model's earlier MLP they
    differ more (the MLP rules and attention act in between)."""
    model = tiny("llama")
    clean, corrupt, metric = pair()
    spec = SweepSpec(kind="mlp_out", per_position=False)
    relp = attribution_patch(model, clean, corrupt, metric, spec, method="relp")
    atp = attribution_patch(model, clean, corrupt, metric, spec, method="atp")
    assert relp.metadata["method"] == "relp"
    gap = (relp.values - atp.values).abs().sum(-1)  # [layer]
    assert gap[0] > 0 and gap[1] > 0


def test_relp_query_key_sites_need_the_softmax_gradient():
    """Default RelP estimates queries and keys (the softmax keeps its gradient, as AtP's);
    with the AH rule they get no relevance and are refused."""
    model = tiny("gpt2")
    clean, corrupt, metric = pair()
    for kind in ("q", "k"):
        spec = SweepSpec(kind=kind, per_position=False)
        relp = attribution_patch(model, clean, corrupt, metric, spec, method="relp")
        assert relp.metadata["relp_rules"] == sorted(DEFAULT_RULES)
        assert bool((relp.values - relp.base).abs().sum() > 0)
    for kind in ("q", "k", "pattern"):
        with pytest.raises(ValueError, match="pattern as a constant"):
            attribution_patch(
                model, clean, corrupt, metric, SweepSpec(kind=kind), method="relp", relp_rules=RULES
            )
    with pytest.raises(ValueError, match="method must be one of"):
        attribution_patch(model, clean, corrupt, metric, SweepSpec(kind="z"), method="lrp")


@pytest.mark.parametrize("rules", [DEFAULT_RULES, RULES], ids=["default", "with-ah"])
def test_edge_relp_sums_to_node_relp_and_is_registered(rules):
    """Edge RelP sums to node RelP (a node's edges carry its whole output), q/k edges score
    zero under the AH rule only, and ``ALGORITHMS['relp']`` returns a circuit like ``'eap'``."""
    model = tiny("gpt2", activation_function="linear")
    clean, corrupt, metric = pair()
    graph = Graph.from_model(model)
    scores = relp_scores(model, clean, corrupt, graph, metric, rules=rules)
    assert scores.shape == (len(graph.edges),)
    qk = torch.tensor([e.channel in ("q", "k") for e in graph.edges])
    assert bool((scores[qk] == 0).all()) == ("ah" in rules) and bool((scores[~qk] != 0).any())
    plain = eap_scores(model, clean, corrupt, graph, metric)
    assert not torch.allclose(scores, plain)
    # an MLP node's outgoing edges sum to patching its output everywhere (node-level RelP)
    node = attribution_patch(
        model,
        clean,
        corrupt,
        metric,
        SweepSpec(kind="mlp_out", per_position=False),
        method="relp",
        direction="noise",
        relp_rules=rules,
    )
    for layer in range(2):
        outgoing = [
            i for i, e in enumerate(graph.edges) if e.source.kind == "mlp" and e.source.layer == layer
        ]
        effect = (node.values[layer] - node.base).sum()
        torch.testing.assert_close(scores[outgoing].sum(), effect, atol=1e-4 * effect.abs(), rtol=1e-4)
    config = CONFIGS["relp"](top_n=10, rules=rules)
    circuit = ALGORITHMS["relp"](model, PairedData(clean, corrupt), metric, graph, config=config)
    assert circuit.metadata["algorithm"] == "relp" and circuit.n_edges <= 10
    torch.testing.assert_close(circuit.scores, scores / clean.shape[0])


def test_rule_subsets():
    """AtP run inside ``relevance_rules`` is RelP (default: LN, identity, half); with no rules
    it is AtP; unknown rules fail."""
    model = tiny("llama")
    clean, corrupt, metric = pair()
    spec = SweepSpec(kind="mlp_out", per_position=False)
    relp = attribution_patch(model, clean, corrupt, metric, spec, method="relp").values
    atp = attribution_patch(model, clean, corrupt, metric, spec).values
    with relevance_rules(model):
        torch.testing.assert_close(attribution_patch(model, clean, corrupt, metric, spec).values, relp)
    with relevance_rules(model, rules=()):
        torch.testing.assert_close(attribution_patch(model, clean, corrupt, metric, spec).values, atp)
    with relevance_rules(model, rules=("ln", "ah")):
        partial = attribution_patch(model, clean, corrupt, metric, spec).values
    assert not torch.allclose(partial, relp) and not torch.allclose(partial, atp)
    with (
        pytest.raises(ValueError, match="unknown relevance rules"),
        relevance_rules(model, rules=("lrp-eps",)),
    ):
        pass


def test_configs_default_to_the_library_rules():
    """YAML steps (``relp_rules``) and ``RelPConfig`` default to ``DEFAULT_RULES``."""
    from mechinterp.cli.schema import AttributionStep, CircuitStep

    for step in (AttributionStep, CircuitStep):
        assert step.model_fields["relp_rules"].default == list(DEFAULT_RULES)
    assert CONFIGS["relp"]().rules == DEFAULT_RULES
