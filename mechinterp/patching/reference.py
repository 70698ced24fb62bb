"""The slow, literal reference: one full forward per cell, hooks only.

Kept to test the batched engine against (``tests/test_patching_engine.py``) and as the
readable definition of what a patching sweep computes.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from mechinterp.dims import AttentionMask
from mechinterp.metrics import MetricFn, PositionalMetric
from mechinterp.patching.engine import Ablation, ablated_source, site_index
from mechinterp.patching.sites import SweepSpec
from mechinterp.patching.sweep import Direction, TextOrTokens, base_and_source, make_scorer, prepare_pair


@torch.no_grad()
def reference_patch_sweep(
    model,
    clean: TextOrTokens,
    corrupt: TextOrTokens,
    spec: SweepSpec,
    metric: PositionalMetric | MetricFn,
    *,
    direction: Direction = "denoise",
    ablation: Ablation = "resample",
    attention_mask: AttentionMask | None = None,
) -> Float[Tensor, "*cell"]:
    """Values ``[*grid, batch]`` (or ``[*grid]`` for scalar metrics), one forward per cell."""
    clean_tokens, corrupt_tokens, mask = prepare_pair(model, clean, corrupt, attention_mask)
    base, source = base_and_source(clean_tokens, corrupt_tokens, direction)
    grid = spec.enumerate(model, base.shape[1])
    scorer = make_scorer(metric, model, base, mask)
    _, source_cache = model.run_with_cache(source, attention_mask=mask)
    values = []
    for site in grid.cells:
        index = (slice(None), *site_index(site))
        patched_in = ablated_source(source_cache[site.hook_name], ablation)

        def set_site(activation, hook, index=index, patched_in=patched_in):
            activation[index] = patched_in[index]
            return activation

        logits = model.run_with_hooks(base, attention_mask=mask, fwd_hooks=[(site.hook_name, set_site)])
        values.append(scorer.run_values(logits))
    stacked = torch.stack(values)
    return stacked.reshape(*grid.shape, *stacked.shape[1:])
