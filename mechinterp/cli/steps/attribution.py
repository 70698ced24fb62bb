"""Step ``attribution``: attribution patching (AtP, or AtP* with ``method: atp*``) over a
sweep grid, optionally compared with an earlier exact patching step over the same grid.

Writes ``result.safetensors`` + ``result.json``, a heatmap, the top cells, and with
``compare_with``: correlations, top-k overlap, a scatter and the worst disagreements.

Example config::

    - kind: attribution
      name: heads_atp
      site: z
      per_position: false
      compare_with: heads
"""

from __future__ import annotations

from pathlib import Path

from mechinterp.cli.schema import AttributionStep
from mechinterp.cli.steps.output import StepOutput, significant, table
from mechinterp.cli.steps.patching import summarize, sweep_spec
from mechinterp.patching import PatchResult, attribution_patch, compare
from mechinterp.plotting import comparison_scatter, patch_heatmap


def run(step: AttributionStep, context, out: Path) -> StepOutput:
    pairs = context.pairs
    result = attribution_patch(
        context.model,
        pairs.clean,
        pairs.corrupt,
        context.metric,
        sweep_spec(step),
        method=step.method,
        relp_rules=step.relp_rules,
        direction=step.direction,
        attention_mask=pairs.attention_mask,
    )
    result.save(out / "result")
    summary, top = summarize(result, step.top_n)
    figures = {"heatmap": patch_heatmap(result, title=f"{step.label}: {step.site} {step.method} estimate")}
    tables = [table(f"top {len(top)} cells by |estimated effect|", top)]
    if step.compare_with is not None:
        exact = PatchResult.load(context.step_dir(step.compare_with) / "result")
        # AtP*'s GradDrop keeps magnitudes only, so it is compared by magnitude (as in the paper)
        by = "magnitude" if step.method == "atp*" else "effect"
        comparison = compare(exact, result, top_k=step.top_n, by=by, names=("exact", step.method))
        summary |= {
            "pearson": significant(comparison.pearson),
            "spearman": significant(comparison.spearman),
            f"top-{comparison.top_k} overlap": significant(comparison.top_k_overlap),
        }
        figures["vs_exact"] = comparison_scatter(comparison)
        worst = comparison.disagreements.head(step.top_n)
        tables.append(table(f"largest rank disagreements with {step.compare_with!r} ({by})", worst))
    return StepOutput(summary=summary, figures=figures, tables=tables)
