"""Launch budget: how many aten operations (work ops, ``benchmarks/op_count.py``) a forward
pass and the patching sweeps dispatch. Op counts are deterministic, so they are asserted
exactly against budgets, not timed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformer_lens import patching as tl_patching

from mechinterp.metrics import LogitDifference
from mechinterp.patching import SweepSpec, patch_sweep

_spec = importlib.util.spec_from_file_location(
    "op_count", Path(__file__).parents[1] / "benchmarks" / "op_count.py"
)
op_count = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(op_count)


def test_counter_leaves_out_views_and_counts_work():
    x = torch.ones(4, 3)
    with op_count.WorkOpCounter() as ops:
        y = x.view(3, 4).t()[1:].unsqueeze(0)  # views only
        (y * 2).sum()
        y.reshape(-1)  # a transposed tensor cannot be flattened in place: reshape copies
    assert ops.counts == {"mul": 1, "sum": 1, "clone": 1}


@torch.no_grad()
def test_sweeps_cost_a_few_forwards_not_one_per_cell(tiny_llama):
    tokens = torch.randint(3, 90, (1, 9), generator=torch.Generator().manual_seed(0))
    corrupt = tokens.clone()
    corrupt[0, 4] = 91
    metric = LogitDifference.last_position(torch.ones_like(tokens), correct=[5], incorrect=[6])
    forward = op_count.count_work_ops(lambda: tiny_llama(tokens)).total
    for spec in (SweepSpec(kind="resid_pre"), SweepSpec(kind="z"), SweepSpec(kind="z", per_position=False)):
        sweep = op_count.count_work_ops(
            lambda spec=spec: patch_sweep(tiny_llama, tokens, corrupt, spec, metric, progress=False)
        )
        assert sweep.total <= 4 * forward, (spec, sweep.total, forward, sweep.most_common(5))


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_launch_budget_and_values_equal_transformer_lens(smollm2):
    model, _ = smollm2
    counts = {
        label: op_count.count_work_ops(call).total for label, call in op_count.budget_calls(model).items()
    }
    for label, budget in op_count.BUDGETS.items():
        assert counts[label] <= budget, (label, counts[label], budget)
    clean, corrupt = model.to_tokens(op_count.CLEAN), model.to_tokens(op_count.CORRUPT)
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    metric = LogitDifference.last_position(torch.ones_like(clean), correct=[mary], incorrect=[john])
    layers = (14,)  # TL runs one forward per cell: one layer keeps the test short
    ours = patch_sweep(
        model, clean, corrupt, SweepSpec(kind="resid_pre", layers=layers), metric, progress=False
    )
    _, cache = model.run_with_cache(clean)
    grid = tl_patching.make_df_from_ranges([model.cfg.n_layers, clean.shape[1]], ["layer", "pos"])
    grid = grid[grid.layer.isin(layers)]
    theirs = tl_patching.get_act_patch_resid_pre(
        model,
        corrupt,
        cache,
        lambda logits: logits[0, -1, mary] - logits[0, -1, john],
        index_df=grid,
        index_axis_names=None,
    )
    torch.testing.assert_close(ours.values[..., 0].flatten(), theirs.flatten(), atol=1e-4, rtol=0)
