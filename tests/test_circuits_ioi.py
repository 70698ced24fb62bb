"""Circuit discovery on a real model: IOI on SmolLM2-135M (about 70,000 edges)."""

from __future__ import annotations

import pytest
import torch

from circuits import ALGORITHMS, EAPConfig, EAPIGConfig, Graph, evaluate_circuit, patch_edges
from mechinterp.data import ioi_pairs
from tests.conftest import assert_close_to_scale


@pytest.fixture(scope="module")
def ioi(smollm2):
    model = smollm2[0]
    return model, ioi_pairs(model, 4), Graph.from_model(model)


@pytest.mark.parametrize(
    ("name", "config"),
    # EAP ranks the input's edges low here: its top 300 edges do not reach the input, which
    # prunes them to nothing; EAP-IG ranks input -> m0 first (Hanna et al. 2024's point)
    [("eap", EAPConfig(top_n=1500)), ("eap-ig", EAPIGConfig(top_n=300, steps=3))],
)
def test_under_two_percent_of_the_edges_carry_most_of_the_ioi_behaviour(ioi, name, config):
    model, pairs, graph = ioi
    circuit = ALGORITHMS[name](model, pairs, pairs.metric(), graph, config=config)
    assert 50 < circuit.n_edges <= config.top_n  # at most 2% of the graph
    score = evaluate_circuit(
        model, pairs.clean, pairs.corrupt, circuit, pairs.metric(), attention_mask=pairs.attention_mask
    )
    assert score.full_model > 1.0 > -1.0 > score.all_ablated  # the model does IOI; S2-swap flips it
    assert score.faithfulness > 0.5
    into_logits = [e for e in circuit.edges_in_graph() if e.channel == "logits"]
    assert any(
        e.source.kind == "head" and e.source.layer >= 15 for e in into_logits
    )  # late heads write the answer


def test_edge_patching_on_the_real_graph_matches_the_two_end_runs(ioi):
    model, pairs, graph = ioi
    masks = torch.stack([torch.zeros(len(graph.edges)), torch.ones(len(graph.edges))])
    values = patch_edges(
        model, pairs.clean, pairs.corrupt, graph, masks, pairs.metric(), attention_mask=pairs.attention_mask
    )
    with torch.no_grad():
        clean = pairs.metric()(model(pairs.clean, attention_mask=pairs.attention_mask))
        corrupt = pairs.metric()(model(pairs.corrupt, attention_mask=pairs.attention_mask))
    assert_close_to_scale(values.mean(-1), torch.stack([clean, corrupt]), 1e-3, dim=None)  # 30 layers
