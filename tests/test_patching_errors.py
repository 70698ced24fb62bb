"""Bad patching input gets a specific error."""

from __future__ import annotations

import pytest
import torch

from mechinterp.metrics import LogitDifference
from mechinterp.patching import PatchSite, SweepSpec, patch_sweep


def test_clean_and_corrupt_shapes_differ(tiny_llama):
    metric = LogitDifference(torch.tensor([3]), torch.tensor([5]), torch.tensor([6]))
    with pytest.raises(ValueError, match=r"clean tokens have shape \(1, 4\) but corrupt tokens \(1, 5\)"):
        patch_sweep(
            tiny_llama,
            torch.zeros(1, 4, dtype=torch.long),
            torch.zeros(1, 5, dtype=torch.long),
            SweepSpec(kind="resid_pre"),
            metric,
        )
    with pytest.raises(
        ValueError,
        match=r"same number of tokens, example by example; got clean lengths \[4\] "
        r"and corrupt lengths \[5\]",
    ):
        patch_sweep(tiny_llama, "abc", "abcd", SweepSpec(kind="resid_pre"), metric)


def test_metric_must_give_scalar_or_per_example_values(tiny_llama):
    tokens = torch.randint(3, 98, (2, 5))
    with pytest.raises(
        ValueError,
        match=r"metric must return a scalar or one value per example \(2\), "
        r"got shape \(2, 5\)",
    ):
        patch_sweep(
            tiny_llama, tokens, tokens.flip(1), SweepSpec(kind="resid_pre"), lambda logits: logits[..., 0]
        )
    with pytest.raises(ValueError, match=r"metric reads \(3,\) positions, expected one per example \(2\)"):
        metric = LogitDifference(torch.tensor([4, 4, 4]), torch.tensor([5, 5, 5]), torch.tensor([6, 6, 6]))
        patch_sweep(tiny_llama, tokens, tokens.flip(1), SweepSpec(kind="resid_pre"), metric)


def test_sites_that_do_not_exist(tiny_llama):
    tokens = torch.randint(3, 98, (1, 5))
    metric = LogitDifference(torch.tensor([4]), torch.tensor([5]), torch.tensor([6]))
    cases = [
        (SweepSpec(kind="resid_pre", layers=(2,)), r"layer 2 does not exist \(model has 2 layers\)"),
        (SweepSpec(kind="z", heads=(4,)), r"head 4 does not exist \(z has 4 heads\)"),
        (SweepSpec(kind="k", heads=(2,)), r"head 2 does not exist \(k has 2 heads\)"),  # GQA: 2 kv heads
        (
            SweepSpec(kind="attn_out", positions=(5,)),
            r"position 5 does not exist \(the prompts have 5 positions\)",
        ),
        (SweepSpec(kind="resid_pre", per_src_position=True), "per_src_position needs kind='pattern'"),
    ]
    for spec, message in cases:
        with pytest.raises(ValueError, match=message):
            patch_sweep(tiny_llama, tokens, tokens.flip(1), spec, metric, progress=False)
    with pytest.raises(ValueError, match="resid_pre has no head axis"):
        PatchSite(kind="resid_pre", layer=0, head=1).validate(tiny_llama, 5)


def test_answers_that_are_not_single_tokens(tiny_llama):
    with pytest.raises(ValueError, match=r"'ab' is 2 tokens, not one: \['a', 'b'\]"):
        LogitDifference.from_answers(tiny_llama, torch.ones(1, 3), correct=["ab"], incorrect=["c"])


def test_bad_direction_ablation_and_batch_rows(tiny_llama):
    tokens = torch.randint(3, 98, (1, 5))
    metric = LogitDifference(torch.tensor([4]), torch.tensor([5]), torch.tensor([6]))
    spec = SweepSpec(kind="resid_pre")
    # Literal-typed options: the message names the allowed values (ours, or the runtime type
    # checker's when the tests run with jaxtyping's import hook)
    with pytest.raises((ValueError, TypeError), match="'denoise'.*'noise'"):
        patch_sweep(tiny_llama, tokens, tokens.flip(1), spec, metric, direction="forward")
    with pytest.raises((ValueError, TypeError), match="'resample'.*'zero'.*'mean'"):
        patch_sweep(tiny_llama, tokens, tokens.flip(1), spec, metric, ablation="random")
    with pytest.raises(ValueError, match="max_batch_rows must be >= 1 or 'auto', got 0"):
        patch_sweep(tiny_llama, tokens, tokens.flip(1), spec, metric, max_batch_rows=0, progress=False)


def test_every_entry_point_checks_the_direction(tiny_llama):
    from mechinterp.patching import Receiver, attribution_patch, path_patch

    tokens = torch.randint(3, 98, (1, 5))
    metric = LogitDifference(torch.tensor([4]), torch.tensor([5]), torch.tensor([6]))
    spec = SweepSpec(kind="z", per_position=False)
    with pytest.raises((ValueError, TypeError), match="'denoise'.*'noise'"):
        attribution_patch(tiny_llama, tokens, tokens.flip(1), metric, spec, direction="sideways")
    with pytest.raises((ValueError, TypeError), match="'denoise'.*'noise'"):
        path_patch(
            tiny_llama, tokens, tokens.flip(1), spec, [Receiver("logits")], metric, direction="sideways"
        )
