"""Circuit discovery recovers the induction circuit of the toy attention-only model:
previous-token head (layer 0) -> induction head's key (layer 1) -> logits."""

from __future__ import annotations

import pytest
import torch

import circuits
from mechinterp.data.induction import induction_pairs
from mechinterp.lens.heads import head_scores, induction_scores

# (algorithm, config, most edges kept): EAP's linear estimate underrates key edges (they act
# through the softmax), so it needs a larger edge budget than ACDC to reach the key edge.
SETTINGS = [
    ("acdc", circuits.ACDCConfig(threshold=0.2), 0.3),
    ("eap", circuits.EAPConfig(top_n=30), 0.4),
]


@pytest.fixture(scope="module")
def setup(induction_model):
    pairs = induction_pairs(induction_model, 32, seed=0)
    previous = int(head_scores(induction_model, pairs.clean, "previous_token")[0].argmax())
    induction = int(induction_scores(induction_model, seq_len=20)[1].argmax())
    return pairs, circuits.Graph.from_model(induction_model), previous, induction


@pytest.mark.parametrize(("name", "config", "max_fraction"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_recovers_induction_circuit(induction_model, setup, name, config, max_fraction):
    pairs, graph, previous, induction = setup
    metric = pairs.metric()
    circuit = circuits.ALGORITHMS[name](induction_model, pairs, metric, graph, config=config)
    edges = {edge.name for edge in circuit.edges_in_graph()}
    assert f"a0.h{previous}->a1.h{induction}<k>" in edges
    assert f"a1.h{induction}->logits" in edges
    assert circuit.n_edges < max_fraction * len(graph.edges)
    masks = torch.stack(
        [(~circuit.in_graph).float(), torch.zeros(len(graph.edges)), torch.ones(len(graph.edges))]
    )
    kept, full, none = circuits.patch_edges(
        induction_model, pairs.clean, pairs.corrupt, graph, masks, metric
    ).mean(-1)
    assert full > 5  # the full model separates the answers by several logits
    assert (kept - none) / (full - none) >= 0.8
