"""Drop-in replacements for ``transformer_lens.patching.get_act_patch_*``.

Same signatures, argument meanings and output shapes as TransformerLens 4.3; switch by
changing one import::

    # from transformer_lens import patching
    from mechinterp.patching import tl_compat as patching

    patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)

On a ``HookedLM`` the cells run through the batched engine (layer skipping, prefix reuse,
rows that cannot change skipped); the metric still receives full logits
``[batch, pos, d_vocab]`` per cell, exactly as in TransformerLens. Any other model (a
``TransformerBridge``) is handed to TransformerLens' own function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from transformer_lens import patching as tl_patching
from transformer_lens.patching import PatchingResult, make_df_from_ranges

from mechinterp.models.hooked_lm import HookedLM
from mechinterp.patching.engine import BatchedPatcher
from mechinterp.patching.scoring import FullLogitScorer
from mechinterp.patching.sites import PatchSite, SiteKind, SweepSpec

_TL_AXIS = {"head": "head_index"}  # TL's name for our pattern head axis
_FROM_TL = {"head_index": "head", "pos": "position", "dest_pos": "position", "src_pos": "src_position"}


def _sites_from_index_df(kind: SiteKind, index_df: pd.DataFrame) -> list[PatchSite]:
    cells = []
    for _, row in index_df.iterrows():
        fields = {_FROM_TL.get(name, name): int(value) for name, value in row.items()}
        cells.append(PatchSite(kind=kind, **fields))
    return cells


def _sweep(
    spec: SweepSpec,
    tl_name: str,
    model: Any,
    corrupted_tokens: Tensor,
    clean_cache: Any,
    patching_metric: Any,
    index_df: pd.DataFrame | None = None,
    return_index_df: bool = False,
    *,
    reduce: str = "scalar",
    baseline: bool = False,
) -> Tensor | tuple[Tensor, pd.DataFrame] | PatchingResult:
    if not isinstance(model, HookedLM):
        return getattr(tl_patching, tl_name)(
            model,
            corrupted_tokens,
            clean_cache,
            patching_metric,
            index_df=index_df,
            return_index_df=return_index_df,
            reduce=reduce,
            baseline=baseline,
        )
    corrupted_tokens = corrupted_tokens.to(model.device)
    batch, n_pos = corrupted_tokens.shape
    scorer = FullLogitScorer(patching_metric, batch, reduce)
    if index_df is None:
        grid = spec.enumerate(model, n_pos)
        cells, shape = grid.cells, grid.shape
        axis_names = [_TL_AXIS.get(a, a) if spec.kind == "pattern" else a for a in grid.axes]  # TL's names
        index_df = make_df_from_ranges(list(shape), axis_names)
    else:
        cells, shape, axis_names = _sites_from_index_df(spec.kind, index_df), (len(index_df),), []
        for site in cells:
            site.validate(model, n_pos)
    want_result = scorer.multi or reduce == "none" or baseline
    if want_result and return_index_df:
        raise ValueError(
            "return_index_df only applies to the tensor return; a PatchingResult carries index_df"
        )
    hook_names = {site.hook_name for site in cells}
    source = {name: clean_cache[name].to(model.device) for name in hook_names}
    patcher = BatchedPatcher(
        model, corrupted_tokens, torch.ones_like(corrupted_tokens), cells, scorer, source_activations=source
    )
    values, base_value = patcher.run(description=tl_name)
    values = values.reshape(*shape, *values.shape[1:])
    if scorer.multi:  # TL puts the metric axis first
        values = values.movedim(len(shape), 0)
    if not want_result:
        return (values, index_df) if return_index_df else values
    return PatchingResult(
        values=values,
        axis_names=axis_names,
        index_df=index_df,
        metric_names=list(scorer.metrics),
        reduced=reduce != "none",
        baseline=base_value if baseline else None,
        has_metric_axis=scorer.multi,
    )


def _make(tl_name: str, spec: SweepSpec):
    def sweep(
        model,
        corrupted_tokens,
        clean_cache,
        patching_metric,
        index_df=None,
        return_index_df=False,
        *,
        reduce="scalar",
        baseline=False,
        index_axis_names=None,  # fixed by the function, as in TL's partials; accepted for parity
    ):
        return _sweep(
            spec,
            tl_name,
            model,
            corrupted_tokens,
            clean_cache,
            patching_metric,
            index_df,
            return_index_df,
            reduce=reduce,
            baseline=baseline,
        )

    sweep.__name__ = sweep.__qualname__ = tl_name
    sweep.spec = spec
    axes = ", ".join(spec.axes())
    sweep.__doc__ = (
        f"Batched ``transformer_lens.patching.{tl_name}``: patch clean ``{spec.kind}`` "
        f"activations into the corrupted run; returns ``[{axes}]``."
    )
    return sweep


get_act_patch_resid_pre = _make("get_act_patch_resid_pre", SweepSpec(kind="resid_pre"))
get_act_patch_resid_mid = _make("get_act_patch_resid_mid", SweepSpec(kind="resid_mid"))
get_act_patch_attn_out = _make("get_act_patch_attn_out", SweepSpec(kind="attn_out"))
get_act_patch_mlp_out = _make("get_act_patch_mlp_out", SweepSpec(kind="mlp_out"))
get_act_patch_attn_head_out_by_pos = _make("get_act_patch_attn_head_out_by_pos", SweepSpec(kind="z"))
get_act_patch_attn_head_q_by_pos = _make("get_act_patch_attn_head_q_by_pos", SweepSpec(kind="q"))
get_act_patch_attn_head_k_by_pos = _make("get_act_patch_attn_head_k_by_pos", SweepSpec(kind="k"))
get_act_patch_attn_head_v_by_pos = _make("get_act_patch_attn_head_v_by_pos", SweepSpec(kind="v"))
get_act_patch_attn_head_pattern_by_pos = _make(
    "get_act_patch_attn_head_pattern_by_pos", SweepSpec(kind="pattern")
)
get_act_patch_attn_head_pattern_dest_src_pos = _make(
    "get_act_patch_attn_head_pattern_dest_src_pos", SweepSpec(kind="pattern", per_src_position=True)
)
get_act_patch_attn_head_out_all_pos = _make(
    "get_act_patch_attn_head_out_all_pos", SweepSpec(kind="z", per_position=False)
)
get_act_patch_attn_head_q_all_pos = _make(
    "get_act_patch_attn_head_q_all_pos", SweepSpec(kind="q", per_position=False)
)
get_act_patch_attn_head_k_all_pos = _make(
    "get_act_patch_attn_head_k_all_pos", SweepSpec(kind="k", per_position=False)
)
get_act_patch_attn_head_v_all_pos = _make(
    "get_act_patch_attn_head_v_all_pos", SweepSpec(kind="v", per_position=False)
)
get_act_patch_attn_head_pattern_all_pos = _make(
    "get_act_patch_attn_head_pattern_all_pos", SweepSpec(kind="pattern", per_position=False)
)

_HEAD_TYPES = ("out", "q", "k", "v", "pattern")


def _stack(
    results: list, *, axis_order: tuple[str, ...], n_heads: int, type_names, pattern_to_pos_head: bool = False
):
    """Stack sweeps on a leading patch-type axis as TransformerLens does (GQA k/v padded to n_heads)."""
    if not all(isinstance(r, Tensor) for r in results):
        return tl_patching._stack_patch_types(
            results, axis_order=axis_order, n_heads=n_heads, type_names=type_names
        )
    tensors = list(results)
    if "head" in axis_order:
        for i in (2, 3):
            tensors[i] = torch.nn.functional.pad(tensors[i], (0, n_heads - tensors[i].size(-1)))
    if pattern_to_pos_head:
        tensors[4] = tensors[4].transpose(-1, -2)  # [layer, head, dest_pos] -> [layer, pos, head]
    return torch.stack(tensors, dim=0)


def _run_every(sweeps, model, corrupted_tokens, clean_cache, metric, kwargs: Mapping[str, Any]) -> list:
    baseline = bool(kwargs.get("baseline", False))
    rest = {k: v for k, v in kwargs.items() if k != "baseline"}
    results = []
    for i, sweep in enumerate(sweeps):
        out = sweep(model, corrupted_tokens, clean_cache, metric, baseline=baseline and i == 0, **rest)
        if baseline and isinstance(out, Tensor):
            out = tl_patching._wrap_tensor_result(out, _axes_of(sweep))
        results.append(out)
    return results


def _axes_of(sweep) -> list[str]:
    spec = sweep.spec
    return [_TL_AXIS.get(a, a) if spec.kind == "pattern" else a for a in spec.axes()]


def get_act_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, metric, **kwargs):
    """Every head, all positions, for out/q/k/v/pattern: ``[5, layer, head]``."""
    sweeps = (
        get_act_patch_attn_head_out_all_pos,
        get_act_patch_attn_head_q_all_pos,
        get_act_patch_attn_head_k_all_pos,
        get_act_patch_attn_head_v_all_pos,
        get_act_patch_attn_head_pattern_all_pos,
    )
    results = _run_every(sweeps, model, corrupted_tokens, clean_cache, metric, kwargs)
    return _stack(results, axis_order=("layer", "head"), n_heads=model.cfg.n_heads, type_names=_HEAD_TYPES)


def get_act_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, metric, **kwargs):
    """Every head by position, for out/q/k/v/pattern: ``[5, layer, pos, head]``."""
    sweeps = (
        get_act_patch_attn_head_out_by_pos,
        get_act_patch_attn_head_q_by_pos,
        get_act_patch_attn_head_k_by_pos,
        get_act_patch_attn_head_v_by_pos,
        get_act_patch_attn_head_pattern_by_pos,
    )
    results = _run_every(sweeps, model, corrupted_tokens, clean_cache, metric, kwargs)
    return _stack(
        results,
        axis_order=("layer", "pos", "head"),
        n_heads=model.cfg.n_heads,
        type_names=_HEAD_TYPES,
        pattern_to_pos_head=True,
    )


def get_act_patch_block_every(model, corrupted_tokens, clean_cache, metric, **kwargs):
    """resid_pre, attn_out and mlp_out by position: ``[3, layer, pos]``."""
    sweeps = (get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)
    results = _run_every(sweeps, model, corrupted_tokens, clean_cache, metric, kwargs)
    return _stack(
        results, axis_order=("layer", "pos"), n_heads=0, type_names=("resid_pre", "attn_out", "mlp_out")
    )
