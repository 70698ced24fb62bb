"""Models placed across devices (``load_model(..., device_map=...)``).

This machine has only a CPU, so the split runs every block on "cpu": it checks that the
placed model and every algorithm on it give the unsplit model's numbers, and the placement
logic on its own. The cross-device moves run whenever a GPU is present (see the last test).
"""

from __future__ import annotations

import pytest
import torch

import mechinterp
from circuits import Graph, eap_scores, patch_edges
from mechinterp.lens import direct_logit_attribution, logit_lens
from mechinterp.metrics import LogitDifference
from mechinterp.models.placement import balanced_map, resolve_device_map
from mechinterp.models.tiny import tiny_hf_model
from mechinterp.patching import Receiver, SweepSpec, attribution_patch, patch_sweep, path_patch


@pytest.fixture(scope="module")
def models():
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2, n_layers=3)
    whole = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    split = mechinterp.load_model(hf_model, tokenizer=tokenizer, device_map={0: "cpu", 1: "cpu", 2: "cpu"})
    return whole, split


def inputs():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(3, 98, (2, 7), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 2] = 9
    corrupt[1, 4] = 11
    metric = LogitDifference.last_position(
        torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8], reduce="none"
    )
    return clean, corrupt, metric


def algorithms():
    """Every algorithm's result tensor on a model, for comparing placements."""
    clean, corrupt, metric = inputs()

    def edges(m):
        graph = Graph.from_model(m)
        return patch_edges(m, clean, corrupt, graph, torch.ones(1, len(graph.edges)), metric)

    return {
        "forward": lambda m: m(clean),
        "stacked weights": lambda m: m.W_Q,
        "patch_sweep": lambda m: (
            patch_sweep(m, clean, corrupt, SweepSpec(kind="resid_pre"), metric, progress=False).values
        ),
        "attribution": lambda m: attribution_patch(m, clean, corrupt, metric, SweepSpec(kind="z")).values,
        "atp*": lambda m: (
            attribution_patch(m, clean, corrupt, metric, SweepSpec(kind="q"), method="atp*").values
        ),
        "path patching": lambda m: (
            path_patch(
                m,
                clean,
                corrupt,
                SweepSpec(kind="z", per_position=False),
                [Receiver("logits")],
                metric,
                progress=False,
            ).values
        ),
        "edge patching": edges,
        "eap": lambda m: eap_scores(m, clean, corrupt, Graph.from_model(m), metric),
        "logit lens": lambda m: logit_lens(m, ["hello there"], targets=["e"]).target_logit,
        "dla": lambda m: (
            direct_logit_attribution(
                m, ["hello there", "abc d"], correct=["a", "b"], incorrect=["c", "d"]
            ).values
        ),
    }


def test_every_algorithm_gives_the_unsplit_numbers(models):
    whole, split = models
    assert split.block_devices == (torch.device("cpu"),) * 3
    with torch.no_grad():
        for name, run in algorithms().items():
            torch.testing.assert_close(run(split), run(whole), rtol=0, atol=0, msg=name)


def test_balanced_map_gives_contiguous_runs_of_equal_size():
    gpus = [torch.device("cuda", i) for i in range(3)]
    assert [d.index for d in balanced_map([10] * 6, 0, gpus)] == [0, 0, 1, 1, 2, 2]
    # the home device also holds the embedding and unembedding: it takes fewer blocks
    assert [d.index for d in balanced_map([10] * 6, 10, gpus)] == [0, 1, 1, 1, 2, 2]
    assert balanced_map([10] * 4, 0, gpus[:1]) == (gpus[0],) * 4


def test_device_map_errors(models):
    whole, _ = models
    with pytest.raises(ValueError, match=r"missing blocks \[2\]"):
        resolve_device_map(whole, {0: "cpu", 1: "cpu"})
    with pytest.raises(ValueError, match=r"not blocks of this 3-layer model: \[5\]"):
        resolve_device_map(whole, {0: "cpu", 1: "cpu", 2: "cpu", 5: "cpu"})
    with pytest.raises(ValueError, match="device or device_map, not both"):
        mechinterp.load_model("toy-induction-2l", device="cpu", device_map="auto")
    assert set(resolve_device_map(whole, "auto")[1]) <= {torch.device("cpu"), torch.device("cuda", 0)} | {
        torch.device("cuda", i) for i in range(torch.cuda.device_count())
    }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to split across cuda and cpu")
def test_split_across_cuda_and_cpu(models):
    whole, _ = models
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2, n_layers=3)
    split = mechinterp.load_model(hf_model, tokenizer=tokenizer, device_map={0: "cuda", 1: "cpu", 2: "cuda"})
    assert split.device.type == "cuda" and split.block_devices[1].type == "cpu"
    with torch.no_grad():
        for name, run in algorithms().items():
            got, expected = run(split), run(whole)
            assert got.device == split.device or got.device.type == "cpu", name  # results come home
            torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4, msg=name)


def test_attribution_graphs_on_a_placed_model_equal_the_unsplit_models(models):
    from circuits.tracing import random_transcoders, trace

    whole, split = models
    tc = random_transcoders(whole, 8, kind="clt", seed=3)
    graphs = [trace(model, tc, "abc ab", progress=False, batch_size=16) for model in (whole, split)]
    assert torch.allclose(graphs[0].dense(), graphs[1].dense(), atol=1e-6)
    assert torch.allclose(graphs[0].values, graphs[1].values, atol=1e-6)
