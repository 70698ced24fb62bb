"""Our get_act_patch_* functions against TransformerLens' own, on the same model."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tl_patching
from transformer_lens.model_bridge import TransformerBridge

import mechinterp
from mechinterp.models.tiny import tiny_hf_model
from mechinterp.patching import tl_compat
from tests.conftest import assert_close_to_scale

FUNCTIONS = sorted(name for name in dir(tl_compat) if name.startswith("get_act_patch_"))


def test_every_public_tl_sweep_has_a_drop_in():
    theirs = {
        name for name in dir(tl_patching) if name.startswith("get_act_patch_") and "direct_path" not in name
    }
    assert set(FUNCTIONS) == theirs


@pytest.fixture(
    scope="module",
    params=[("llama", 2), ("gpt2", None), ("gpt_neox", None)],
    ids=["llama-gqa", "gpt2", "gpt_neox"],
)
def setup(request):
    family, kv = request.param
    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=kv)
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(3, 98, (2, 6), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 1] = torch.randint(3, 98, (2,), generator=generator)
    corrupt[0, 3] = 9
    _, cache = model.run_with_cache(clean)
    return model, corrupt, cache


def metric(logits):
    return (logits[:, -1, 5] - logits[:, -1, 7]).mean()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_drop_in_equals_transformer_lens(setup, name):
    model, corrupt, cache = setup
    ours = getattr(tl_compat, name)(model, corrupt, cache, metric)
    theirs = getattr(tl_patching, name)(model, corrupt, cache, metric)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_per_example_results_baselines_and_metric_mappings(setup):
    model, corrupt, cache = setup

    def per_example(logits):
        return logits[:, -1, 5] - logits[:, -1, 7]

    for kwargs in ({"reduce": "none", "baseline": True}, {"reduce": "mean"}):
        ours = tl_compat.get_act_patch_attn_head_out_all_pos(model, corrupt, cache, per_example, **kwargs)
        theirs = tl_patching.get_act_patch_attn_head_out_all_pos(model, corrupt, cache, per_example, **kwargs)
        if isinstance(theirs, torch.Tensor):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
        else:
            torch.testing.assert_close(ours.values, theirs.values, atol=1e-4, rtol=0)
            torch.testing.assert_close(ours.baseline, theirs.baseline, atol=1e-4, rtol=0)
            assert ours.axis_names == theirs.axis_names
    metrics = {"diff": metric, "logit": lambda logits: logits[:, -1, 5].mean()}
    ours = tl_compat.get_act_patch_resid_pre(model, corrupt, cache, metrics)
    theirs = tl_patching.get_act_patch_resid_pre(model, corrupt, cache, metrics)
    torch.testing.assert_close(ours.values, theirs.values, atol=1e-4, rtol=0)
    every = tl_compat.get_act_patch_block_every(
        model, corrupt, cache, per_example, reduce="none", baseline=True
    )
    reference = tl_patching.get_act_patch_block_every(
        model, corrupt, cache, per_example, reduce="none", baseline=True
    )
    torch.testing.assert_close(every.values, reference.values, atol=1e-4, rtol=0)
    assert every.patch_type_names == reference.patch_type_names


def test_index_df_gives_flat_output(setup):
    model, corrupt, cache = setup
    index_df = tl_patching.make_df_from_ranges([2, 3], ["layer", "pos"]).iloc[[0, 4, 5]]
    ours, df = tl_compat.get_act_patch_resid_pre(
        model, corrupt, cache, metric, index_df=index_df, return_index_df=True
    )
    theirs = tl_patching.get_act_patch_resid_pre(
        model, corrupt, cache, metric, index_axis_names=None, index_df=index_df
    )
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert df is index_df


def test_other_models_fall_back_to_transformer_lens(setup):
    hf_model, tokenizer = tiny_hf_model("gpt2")
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")
    bridge = TransformerBridge.boot_transformers("tiny", hf_model=hf_model, tokenizer=tokenizer, device="cpu")
    _, corrupt, _ = setup
    _, cache = bridge.run_with_cache(corrupt.flip(1))
    via_bridge = tl_compat.get_act_patch_mlp_out(bridge, corrupt, cache, metric)
    _, native_cache = model.run_with_cache(corrupt.flip(1))
    native = tl_compat.get_act_patch_mlp_out(model, corrupt, native_cache, metric)
    torch.testing.assert_close(via_bridge, native, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_smollm2_resid_pre_and_heads_equal_transformer_lens(smollm2):
    model, _ = smollm2
    clean = model.to_tokens("When Mary and John went to the store, John gave")
    corrupt = model.to_tokens("When Mary and John went to the store, Mary gave")
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")

    def ioi_metric(logits):
        return logits[0, -1, mary] - logits[0, -1, john]

    _, cache = model.run_with_cache(clean)
    ours = tl_compat.get_act_patch_resid_pre(model, corrupt, cache, ioi_metric)
    theirs = tl_patching.get_act_patch_resid_pre(model, corrupt, cache, ioi_metric)
    assert_close_to_scale(ours, theirs, 2e-4, dim=None)  # 30 layers: relative to the magnitude
