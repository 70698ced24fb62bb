"""The batched engine against the one-forward-per-cell reference, and its invariants."""

from __future__ import annotations

import pytest
import torch

from mechinterp.metrics import KLDivergence, LogitDifference, Normalized, ProbabilityDifference
from mechinterp.patching import PatchSite, SweepSpec, patch_sweep, reference_patch_sweep
from mechinterp.patching import engine as engine_module

SPECS = {
    "resid_pre": SweepSpec(kind="resid_pre"),
    "resid_mid": SweepSpec(kind="resid_mid"),
    "resid_post": SweepSpec(kind="resid_post"),
    "attn_out": SweepSpec(kind="attn_out"),
    "mlp_out": SweepSpec(kind="mlp_out"),
    "mlp_post_all_pos": SweepSpec(kind="mlp_post", per_position=False),
    "z_by_pos": SweepSpec(kind="z"),
    "q_all_pos": SweepSpec(kind="q", per_position=False),
    "k_by_pos": SweepSpec(kind="k"),
    "v_all_pos": SweepSpec(kind="v", per_position=False),
    "pattern_by_pos": SweepSpec(kind="pattern"),
    "pattern_dest_src": SweepSpec(kind="pattern", per_src_position=True),
    "z_layer_all_heads": SweepSpec(kind="z", per_head=False),
}


def pair(batch: int = 2, n_pos: int = 7, seed: int = 0):
    """Clean/corrupt tokens differing at positions 2 and (example 1) 4."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, 98, (batch, n_pos), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(3, 98, (batch,), generator=generator)
    corrupt[-1, 4] = 3 if clean[-1, 4] != 3 else 4
    return clean, corrupt


def logit_diff(batch: int = 2, n_pos: int = 7) -> LogitDifference:
    mask = torch.ones(batch, n_pos, dtype=torch.long)
    return LogitDifference.last_position(
        mask, correct=[5, 6][:batch], incorrect=[7, 8][:batch], reduce="none"
    )


@pytest.mark.parametrize("name", [name for name in SPECS if name != "pattern_dest_src"])
def test_engine_equals_reference_every_site_kind(tiny_pair, name):
    check_engine_against_reference(tiny_pair, name)


def test_engine_equals_reference_per_source_position(core_pair):
    """The costliest reference loop (a forward per query-key pair), on the first families."""
    check_engine_against_reference(core_pair, "pattern_dest_src")


def check_engine_against_reference(tiny_pair, name):
    model, _ = tiny_pair
    clean, corrupt = pair()
    ours = patch_sweep(model, clean, corrupt, SPECS[name], logit_diff(), progress=False)
    reference = reference_patch_sweep(model, clean, corrupt, SPECS[name], logit_diff())
    assert ours.values.shape == reference.shape
    torch.testing.assert_close(ours.values, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
@pytest.mark.parametrize("name", ["resid_pre", "z_by_pos", "pattern_by_pos", "v_all_pos"])
def test_directions_and_ablations(tiny_llama, direction, ablation, name):
    clean, corrupt = pair(batch=3, seed=1)
    metric = LogitDifference.last_position(
        torch.ones_like(clean), correct=[5, 6, 7], incorrect=[8, 9, 10], reduce="none"
    )
    kwargs = {"direction": direction, "ablation": ablation}
    ours = patch_sweep(tiny_llama, clean, corrupt, SPECS[name], metric, progress=False, **kwargs)
    reference = reference_patch_sweep(tiny_llama, clean, corrupt, SPECS[name], metric, **kwargs)
    torch.testing.assert_close(ours.values, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_with_per_example_answer_positions(tiny_pair, side):
    model, _ = tiny_pair
    clean = ["When a and b", "x y"]
    corrupt = ["When a and c", "x z"]
    tokens, mask = model.encode(clean, padding_side=side)
    metric = LogitDifference.last_position(mask, correct=[5, 6], incorrect=[7, 8], reduce="none")
    ours = patch_sweep(
        model,
        tokens,
        model.encode(corrupt, padding_side=side)[0],
        SweepSpec(kind="resid_pre"),
        metric,
        attention_mask=mask,
        progress=False,
    )
    reference = reference_patch_sweep(
        model,
        tokens,
        model.encode(corrupt, padding_side=side)[0],
        SweepSpec(kind="resid_pre"),
        metric,
        attention_mask=mask,
    )
    torch.testing.assert_close(ours.values, reference, atol=1e-4, rtol=0)


def test_chunk_of_one_row_and_tiny_memory_budget(tiny_llama):
    clean, corrupt = pair(batch=3)
    metric = LogitDifference.last_position(
        torch.ones_like(clean), correct=[5, 6, 7], incorrect=[8, 9, 10], reduce="none"
    )
    spec = SweepSpec(kind="z")
    auto = patch_sweep(tiny_llama, clean, corrupt, spec, metric, progress=False)
    one_row = patch_sweep(tiny_llama, clean, corrupt, spec, metric, max_batch_rows=1, progress=False)
    tiny_budget = patch_sweep(tiny_llama, clean, corrupt, spec, metric, max_memory=200_000, progress=False)
    torch.testing.assert_close(one_row.values, auto.values, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny_budget.values, auto.values, atol=1e-5, rtol=0)
    assert one_row.metadata["chunks"] == one_row.metadata["rows_run"] > auto.metadata["chunks"]
    assert tiny_budget.metadata["chunks"] > auto.metadata["chunks"]


def test_out_of_memory_halves_the_chunk_and_retries(tiny_llama, monkeypatch):
    clean, corrupt = pair(batch=2)
    spec = SweepSpec(kind="resid_pre")
    expected = patch_sweep(tiny_llama, clean, corrupt, spec, logit_diff(), progress=False)
    original = engine_module.BatchedPatcher._run_chunk

    def fails_above_two_rows(self, cells, examples, layers, start):
        if len(cells) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, cells, examples, layers, start)

    monkeypatch.setattr(engine_module.BatchedPatcher, "_run_chunk", fails_above_two_rows)
    result = patch_sweep(tiny_llama, clean, corrupt, spec, logit_diff(), max_batch_rows=64, progress=False)
    torch.testing.assert_close(result.values, expected.values, atol=1e-5, rtol=0)
    assert result.metadata["rows_per_chunk"] == 2


def test_full_logit_callables_scalar_and_per_example(representative_pair):
    model, _ = representative_pair
    clean, corrupt = pair()

    def mean_diff(logits):
        return (logits[:, -1, 5] - logits[:, -2, 7]).mean()  # reads two positions

    for metric in (mean_diff, lambda logits: logits[:, 3, 9]):
        ours = patch_sweep(model, clean, corrupt, SPECS["z_by_pos"], metric, progress=False)
        reference = reference_patch_sweep(model, clean, corrupt, SPECS["z_by_pos"], metric)
        torch.testing.assert_close(ours.values, reference, atol=1e-4, rtol=0)


def test_probability_kl_and_normalized_metrics(tiny_llama):
    clean, corrupt = pair()
    positions = torch.tensor([6, 5])
    clean_logits = tiny_llama(clean)[torch.arange(2), positions]
    raw = LogitDifference(positions, torch.tensor([5, 6]), torch.tensor([7, 8]), reduce="none")
    metrics = [
        ProbabilityDifference(positions, torch.tensor([5, 6]), torch.tensor([7, 8]), reduce="none"),
        KLDivergence(positions, clean_logits, reduce="none"),
        Normalized(raw, clean=raw(tiny_llama(clean)), corrupted=raw(tiny_llama(corrupt)), reduce="none"),
    ]
    for metric in metrics:
        ours = patch_sweep(tiny_llama, clean, corrupt, SPECS["resid_pre"], metric, progress=False)
        reference = reference_patch_sweep(tiny_llama, clean, corrupt, SPECS["resid_pre"], metric)
        torch.testing.assert_close(ours.values, reference, atol=1e-4, rtol=0)
    normalized = patch_sweep(tiny_llama, clean, corrupt, SPECS["resid_pre"], metrics[2], progress=False)
    # resid_pre at layer 0 patched at every differing position restores the clean run: 1
    torch.testing.assert_close(normalized.values[0, 2, 0], torch.tensor(1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalized.base, torch.zeros(2), atol=1e-5, rtol=0)


def test_clean_into_clean_changes_nothing(tiny_pair):
    model, _ = tiny_pair
    clean, _ = pair()
    result = patch_sweep(model, clean, clean, SweepSpec(kind="z"), logit_diff(), progress=False)
    assert result.metadata["rows_run"] == 0
    assert torch.equal(result.values, result.base.expand_as(result.values))
    reference = reference_patch_sweep(model, clean, clean, SweepSpec(kind="resid_pre"), logit_diff())
    torch.testing.assert_close(reference, result.base.expand_as(reference), atol=1e-5, rtol=0)


@torch.no_grad()
def test_patch_at_position_leaves_earlier_positions_untouched(tiny_pair):
    model, _ = tiny_pair
    clean, corrupt = pair()
    site = PatchSite(kind="resid_mid", layer=0, position=4)
    source = model.run_with_cache(clean, names_filter=site.hook_name)[1][site.hook_name]

    def patch(activation, hook):
        activation[:, 4] = source[:, 4]
        return activation

    base = model(corrupt)
    patched = model.run_with_hooks(corrupt, fwd_hooks=[(site.hook_name, patch)])
    torch.testing.assert_close(patched[:, :4], base[:, :4], atol=0, rtol=0)
    assert not torch.allclose(patched[:, 4:], base[:, 4:])
