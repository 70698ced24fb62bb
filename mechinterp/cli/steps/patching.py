"""Step ``patching``: an exact activation-patching sweep over the run's prompt pairs.

Writes ``result.safetensors`` + ``result.json`` (``PatchResult.save``), a heatmap and a table
of the cells with the largest effects.

Example config::

    - kind: patching
      name: heads
      site: z
      per_position: false
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mechinterp.cli.schema import AttributionStep, PatchingStep
from mechinterp.cli.steps.output import StepOutput, significant, table
from mechinterp.patching import PatchResult, SweepSpec, patch_sweep
from mechinterp.patching.compare import cell_labels, effects
from mechinterp.plotting import patch_heatmap


def sweep_spec(step: PatchingStep | AttributionStep) -> SweepSpec:
    """The ``SweepSpec`` a patching or attribution step describes."""
    return SweepSpec(
        kind=step.site,
        per_position=step.per_position,
        per_head=step.per_head,
        layers=tuple(step.layers) if step.layers is not None else None,
        heads=tuple(step.heads) if step.heads is not None else None,
    )


def top_cells(result: PatchResult, count: int) -> pd.DataFrame:
    """The ``count`` cells with the largest absolute effect (example mean), largest first."""
    effect = effects(result).reshape(-1)
    frame = pd.DataFrame({"cell": cell_labels(result), "effect": effect.numpy()})
    if result.source is not None:
        frame["normalized"] = result.normalized().reshape(-1).float().numpy()
    order = frame["effect"].abs().sort_values(ascending=False).index[:count]
    return frame.loc[order].reset_index(drop=True)


def summarize(result: PatchResult, count: int) -> tuple[dict, pd.DataFrame]:
    """Key numbers (cells, base and source metric, the top cell) and the top-cells table."""
    top = top_cells(result, count)
    summary = {
        "cells": int(effects(result).numel()),
        "base": significant(float(result.base.float().mean())),
        "top cell": top["cell"][0],
        "top effect": significant(float(top["effect"][0])),
    }
    if result.source is not None:
        summary["source"] = significant(float(result.source.float().mean()))
    return summary, top


def run(step: PatchingStep, context, out: Path) -> StepOutput:
    pairs = context.pairs
    result = patch_sweep(
        context.model,
        pairs.clean,
        pairs.corrupt,
        sweep_spec(step),
        context.metric,
        direction=step.direction,
        ablation=step.ablation,
        attention_mask=pairs.attention_mask,
        executor=context.sweep_executor(step.label),
    )
    result.save(out / "result")
    summary, top = summarize(result, step.top_n)
    return StepOutput(
        summary=summary,
        figures={
            "heatmap": patch_heatmap(result, title=f"{step.label}: {step.site} patching ({step.direction})")
        },
        tables=[table(f"top {len(top)} cells by |effect| (metric change, example mean)", top)],
    )
