"""bfloat16 / float16 models run every algorithm, with metrics and attributions in float32
and close to the float32 model's; the TF32 switch restores the previous setting."""

from __future__ import annotations

import pytest
import torch

import mechinterp
from circuits.eap import eap_scores
from circuits.edge_patching import patch_edges
from circuits.graph import Graph
from mechinterp.lens.dla import direct_logit_attribution
from mechinterp.metrics import LogitDifference
from mechinterp.models.tiny import tiny_hf_model
from mechinterp.patching import Receiver, SweepSpec, attribution_patch, patch_sweep, path_patch

GRADIENT_METHODS = ("atp*", "eap")


def _algorithms(model, clean, corrupt, metric):
    graph = Graph.from_model(model)
    heads = SweepSpec(kind="z", per_position=False)
    return {
        "sweep": lambda: (
            patch_sweep(model, clean, corrupt, SweepSpec(kind="z"), metric, progress=False).values
        ),
        "atp*": lambda: (
            attribution_patch(model, clean, corrupt, metric, SweepSpec(kind="k"), method="atp*").values
        ),
        "path": lambda: (
            path_patch(model, clean, corrupt, heads, [Receiver("logits")], metric, progress=False).values
        ),
        "edges": lambda: patch_edges(model, clean, corrupt, graph, torch.ones(2, len(graph.edges)), metric),
        "eap": lambda: eap_scores(model, clean, corrupt, graph, metric),
        "dla": lambda: (
            direct_logit_attribution(
                model, clean, correct=torch.tensor([5, 6]), incorrect=torch.tensor([7, 8])
            ).values
        ),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models_run_every_algorithm_in_float32_metrics(dtype):
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
    exact = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    low = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu", dtype=dtype)
    clean = torch.randint(3, 90, (2, 8), generator=torch.Generator().manual_seed(0))
    corrupt = clean.clone()
    corrupt[:, 3] = 91
    metric = LogitDifference.last_position(torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8])
    references = _algorithms(exact, clean, corrupt, metric)
    for name, run in _algorithms(low, clean, corrupt, metric).items():
        ours, reference = run(), references[name]()
        assert ours.dtype == torch.float32, name
        tolerance = 0.1 if name in GRADIENT_METHODS else 0.05  # a bf16 backward pass loses more
        assert (ours.cpu() - reference.cpu()).abs().max() <= tolerance * reference.abs().max(), name


def test_tf32_switch_restores_the_previous_setting():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    with pytest.raises(RuntimeError), mechinterp.tf32_matmuls():
        assert matmul.fp32_precision == "tf32"
        raise RuntimeError("inside")
    assert matmul.fp32_precision == before
    with mechinterp.tf32_matmuls(False):
        assert matmul.fp32_precision == "ieee"
    assert matmul.fp32_precision == before
