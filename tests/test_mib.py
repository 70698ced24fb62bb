"""MIB's circuit metrics (CPR / CMD), the offline tasks, and exact ACDC."""

from __future__ import annotations

import math

import pytest
import torch

import mechinterp
from circuits import (
    ALGORITHMS,
    MIB_GRID,
    ACDCExactConfig,
    Circuit,
    Graph,
    Node,
    compare_methods,
    mib_areas,
    mib_curve,
    reference_patch_edges,
)
from mechinterp.data import TASKS, arithmetic_pairs, multiple_choice_pairs
from mechinterp.metrics import GreaterThan
from mechinterp.models.tiny import tiny_hf_model


@pytest.fixture(scope="module")
def model():
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)  # grouped-query: k/v edges serve two heads
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


# --------------------------------------------------------------------- literal MIB, written plainly


def literal_prune(graph: Graph, keep: list[bool]) -> list[bool]:
    """MIB's ``Graph.prune``: repeatedly drop nodes without an incoming or an outgoing edge
    (the input counts as having incoming ones, the logits outgoing ones), then edges whose
    parent or child is gone. A key/value edge feeds every query head of its group."""
    group = graph.n_heads // graph.n_kv_heads

    def children(edge):
        if edge.channel in ("k", "v"):
            return [
                Node("head", edge.target.layer, h)
                for h in range(edge.target.head * group, (edge.target.head + 1) * group)
            ]
        return [edge.target]

    keep = list(keep)
    while True:
        nodes = set(graph.nodes)
        has_out = {edge.source for edge, k in zip(graph.edges, keep, strict=True) if k} | {Node("logits")}
        has_in = {
            child for edge, k in zip(graph.edges, keep, strict=True) if k for child in children(edge)
        } | {Node("input")}
        alive = {node for node in nodes if node in has_out and node in has_in}
        new = [
            k and edge.source in alive and any(c in alive for c in children(edge))
            for edge, k in zip(graph.edges, keep, strict=True)
        ]
        if new == keep:
            return keep
        keep = new


def literal_mib(model, pairs, graph, scores, absolute):
    """MIB's ``evaluate_area_under_curve``, one literal reference forward per circuit."""

    def run(mask):
        return float(
            reference_patch_edges(model, pairs.clean, pairs.corrupt, graph, mask, pairs.metric()).mean()
        )

    n = len(graph.edges)
    baseline = run(torch.zeros(n))
    corrupted = run(torch.ones(n))
    faithfulnesses = []
    for pct in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1):
        count = int(pct * n)
        key = [abs(s) if absolute else -s for s in scores.tolist()]  # our scores: metric change when ablated
        top = sorted(range(n), key=lambda i: -key[i])[:count]
        keep = literal_prune(graph, [i in top for i in range(n)])
        ablated = run(torch.tensor([0.0 if k else 1.0 for k in keep]))
        faithfulnesses.append((ablated - corrupted) / (baseline - corrupted))
    percentages = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)
    area_under, area_from_1 = 0.0, 0.0
    for i in range(len(faithfulnesses) - 1):
        x_1, x_2 = percentages[i], percentages[i + 1]
        area_from_1 += (x_2 - x_1) * ((abs(1 - faithfulnesses[i]) + abs(1 - faithfulnesses[i + 1])) / 2)
        area_under += (x_2 - x_1) * ((faithfulnesses[i] + faithfulnesses[i + 1]) / 2)
    return area_under, area_from_1, faithfulnesses


@pytest.mark.parametrize("absolute", [True, False], ids=["magnitude", "signed"])
def test_cpr_and_cmd_match_a_literal_mib_on_a_fixed_score_vector(model, absolute):
    pairs = TASKS["induction"](model, 3, n_pos=16, block_len=4)
    graph = Graph.from_model(model)
    scores = torch.linspace(-1, 1, len(graph.edges))[
        torch.randperm(len(graph.edges), generator=torch.Generator().manual_seed(0))
    ]
    curve = mib_curve(model, pairs, pairs.metric(), Circuit(graph, scores), absolute=absolute)
    cpr, cmd, faithfulness = literal_mib(model, pairs, graph, scores, absolute)
    assert curve.faithfulness.tolist() == pytest.approx(faithfulness, abs=1e-4)
    assert curve.cpr == pytest.approx(cpr, abs=1e-5)
    assert curve.cmd == pytest.approx(cmd, abs=1e-5)
    assert curve.fractions == list(MIB_GRID) and curve.counts[-1] == len(graph.edges)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)  # every edge kept: the full model


def test_mib_areas_are_trapezoids_over_the_fractions():
    # f = 1 everywhere: CPR is the span of the grid and CMD zero
    assert mib_areas(MIB_GRID, [1.0] * 10) == pytest.approx((0.999, 0.0))
    cpr, cmd = mib_areas([0.1, 0.5, 1.0], [0.0, 2.0, 1.0])
    assert cpr == pytest.approx(0.4 * 1.0 + 0.5 * 1.5)
    assert cmd == pytest.approx(0.4 * 1.0 + 0.5 * 0.5)
    with pytest.raises(ValueError, match="increase"):
        mib_areas([0.5, 0.1], [1.0, 1.0])
    with pytest.raises(ValueError, match="equal"):
        mib_areas([0.1, 0.5], [1.0])


def test_compare_methods_scores_every_registered_method(model):
    pairs = TASKS["arithmetic"](model, 3, shots=1)
    graph = Graph.from_model(model)
    table = compare_methods(model, pairs, pairs.metric(), graph, task="arithmetic", progress=False)
    assert [score.method for score in table.scores] == list(ALGORITHMS)
    frame = table.to_frame()
    assert list(frame["method"]) == list(ALGORITHMS) and set(frame["task"]) == {"arithmetic"}
    eap = next(score for score in table.scores if score.method == "eap")
    again = mib_curve(model, pairs, pairs.metric(), eap.circuit, absolute=False)
    assert eap.cpr == pytest.approx(again.cpr) and eap.cpr_curve is not eap.cmd_curve
    acdc = next(score for score in table.scores if score.method == "acdc")
    assert acdc.cpr_curve is acdc.cmd_curve  # magnitudes only: one ranking
    assert "| eap |" in table.to_markdown()
    from mechinterp.plotting import mib_figure

    assert len(mib_figure(table).data) == len(ALGORITHMS)
    with pytest.raises(ValueError, match="unknown method"):
        compare_methods(model, pairs, pairs.metric(), graph, methods=["nope"])


# ------------------------------------------------------------------------------------------ tasks


def check_pairs(model, pairs, name):
    batch, n_pos = pairs.clean.shape
    assert pairs.corrupt.shape == (batch, n_pos), name
    rows = torch.arange(batch)
    assert bool((pairs.clean != pairs.corrupt).any(1).all()), f"{name}: a corrupt prompt equals its clean one"
    assert bool((pairs.correct != pairs.incorrect).all()), name
    mask = pairs.attention_mask
    if mask is not None:  # the answer is read at the last real token
        assert bool(mask[rows, pairs.positions].bool().all()), name
    else:
        assert bool((pairs.positions == n_pos - 1).all()), name
    with torch.no_grad():
        logits = model(pairs.clean, attention_mask=mask)
    values = pairs.metric()(logits)
    assert values.shape == () and math.isfinite(float(values)), name
    return float(values)


def test_tasks_are_well_formed_on_a_tiny_model(model):
    for name in ("arithmetic", "greater-than", "induction"):
        check_pairs(model, TASKS[name](model, 5, seed=1), name)
    # one character per token: the answered example questions would outgrow the 128-token context
    check_pairs(model, multiple_choice_pairs(model, 5, seed=1, shots=0), "multiple-choice")
    # a character tokenizer has no one-token names
    with pytest.raises(ValueError, match="single tokens"):
        TASKS["ioi"](model, 2)
    with pytest.raises(ValueError, match="operations"):
        arithmetic_pairs(model, 2, operations=("*",))
    with pytest.raises(ValueError, match="n_options"):
        multiple_choice_pairs(model, 2, n_options=5)
    pairs = TASKS["greater-than"](model, 4)
    assert isinstance(pairs.metric(), GreaterThan) and len(pairs.select(2).thresholds) == 2


@pytest.mark.slow
def test_tasks_are_well_formed_on_smollm2_and_the_model_solves_most(smollm2):
    native = smollm2[0]
    tasks = {name: TASKS[name](native, 4, seed=0) for name in TASKS}
    tasks["addition"] = arithmetic_pairs(native, 4, operations=("+",))
    gaps = {}
    for name, pairs in tasks.items():
        clean = check_pairs(native, pairs, name)
        if name not in ("multiple-choice", "arithmetic"):
            with torch.no_grad():
                corrupt = float(pairs.metric()(native(pairs.corrupt, attention_mask=pairs.attention_mask)))
            gaps[name] = clean - corrupt
    text = native.to_string(tasks["greater-than"].clean[0])
    assert text.endswith("to the year " + text.split("from the year ")[1][:3])  # digit mode: decade given
    # the 135M model does IOI, greater-than, induction and one-digit addition; it cannot do
    # 4-way multiple choice (nor, reliably, subtraction)
    assert all(gap > 0.5 for gap in gaps.values()), gaps


# ------------------------------------------------------------------------------------ exact ACDC


def literal_acdc(model, pairs, graph, threshold):
    """Conmy et al.'s loop, one literal reference forward per edge: destinations from the
    logits backwards, their edges from the latest source, each tried against the current
    circuit; removed if the mean metric moves by less than the threshold."""
    destinations = []
    for index, edge in enumerate(graph.edges):
        key = (edge.target, edge.channel)
        if not destinations or destinations[-1][0] != key:
            destinations.append((key, []))
        destinations[-1][1].append(index)
    removed = torch.zeros(len(graph.edges))

    def run(mask):
        return float(
            reference_patch_edges(model, pairs.clean, pairs.corrupt, graph, mask, pairs.metric()).mean()
        )

    current = run(removed)
    for _, edges in reversed(destinations):
        for index in reversed(edges):
            trial = removed.clone()
            trial[index] = 1
            value = run(trial)
            if abs(value - current) < threshold:
                removed, current = trial, value
    return removed == 0


SMALL = {"arithmetic": {"shots": 1}, "induction": {"n_pos": 16, "block_len": 4}}


@pytest.mark.parametrize(("task", "threshold"), [("arithmetic", 0.03), ("induction", 0.01)])
def test_exact_acdc_picks_the_literal_greedy_loops_edges(model, task, threshold):
    pairs = TASKS[task](model, 3, seed=0, **SMALL[task])
    graph = Graph.from_model(model)
    expected = literal_acdc(model, pairs, graph, threshold)
    assert 0 < int(expected.sum()) < len(graph.edges)  # a real choice, not all or nothing
    config = ACDCExactConfig(threshold=threshold, rows_per_forward=3)  # speculative rows re-run after keeps
    circuit = ALGORITHMS["acdc-exact"](model, pairs, pairs.metric(), graph, config=config)
    assert torch.equal(
        circuit.in_graph, Circuit(graph, torch.zeros(len(graph.edges)), expected).pruned().in_graph
    )
    assert circuit.metadata["algorithm"] == "acdc-exact" and circuit.metadata["scores"] == "magnitude"
    # kept edges moved the metric by at least the threshold
    assert bool((circuit.scores[expected] >= threshold).all())


def test_exact_acdc_rejects_bad_settings(model):
    pairs = TASKS["arithmetic"](model, 2)
    graph = Graph.from_model(model)
    with pytest.raises(ValueError, match="rows_per_forward"):
        ALGORITHMS["acdc-exact"](
            model, pairs, pairs.metric(), graph, config=ACDCExactConfig(rows_per_forward=0)
        )
    with pytest.raises(ValueError, match="threshold"):
        ALGORITHMS["acdc-exact"](model, pairs, pairs.metric(), graph, config=ACDCExactConfig(threshold=-1.0))
