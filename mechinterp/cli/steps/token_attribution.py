"""Step ``token_attribution``: several token-attribution methods on the same prompts, side by
side (``mechinterp.token_attribution.compare_methods``).

Writes ``METHOD.safetensors`` + ``METHOD.json`` per method (``TokenAttribution.load``), a
heatmap per method (one row per example), a method-comparison heatmap per example
(``methods_I.html``, the first four examples), the methods' rank agreement and each method's
top tokens.

Example config::

    - kind: token_attribution
      prompts: ["The Eiffel Tower is in the city of"]
      correct: [" Paris"]
      incorrect: [" London"]
      steps: 64
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mechinterp.cli.schema import TokenAttributionStep
from mechinterp.cli.steps.output import StepOutput, table
from mechinterp.plotting import method_comparison_heatmap, token_attribution_heatmap
from mechinterp.token_attribution import compare_methods

SHOWN_EXAMPLES = 4


def run(step: TokenAttributionStep, context, out: Path) -> StepOutput:
    if step.prompts is None:
        pairs = context.pairs
        source = pairs.select(min(step.n, len(pairs)))
        answers = {}
        baseline = None if step.baseline == "corrupt" else step.baseline  # None: the corrupt prompts
    else:
        source = step.prompts
        answers = {"correct": step.correct, "incorrect": step.incorrect}
        baseline = step.baseline
    comparison = compare_methods(
        context.model,
        source,
        methods=step.methods,
        steps=step.steps,
        rule=step.rule,
        baseline=baseline,
        target=step.target,
        layer=step.layer,
        **answers,
    )
    figures, top_rows = {}, []
    for method, attribution in comparison.attributions.items():
        attribution.save(out / method)
        figures[method] = token_attribution_heatmap(attribution)
        frame = attribution.to_dataframe()
        frame = frame[frame["example"] == 0]
        top = frame.loc[frame["value"].abs().sort_values(ascending=False).index].head(5)
        top_rows.append(top.assign(method=method))
    first = next(iter(comparison.attributions.values()))
    summary = {"examples": first.values.shape[0], "methods": len(comparison.attributions)}
    tables = []
    if first.values.ndim == 2:
        for example in range(min(SHOWN_EXAMPLES, first.values.shape[0])):
            figures[f"methods_{example}"] = method_comparison_heatmap(comparison, example=example)
        agreement = comparison.agreement()
        tables.append(
            table("Spearman agreement between methods (example 0)", agreement.reset_index(names="method"))
        )
    ig = comparison.attributions.get("integrated_gradients")
    if ig is not None:
        summary["ig completeness gap (max)"] = round(ig.completeness.max_gap, 4)
        gaps = pd.DataFrame(
            {
                "example": range(len(ig.completeness.gap)),
                "sum of attributions": ig.completeness.total.tolist(),
                "f(x) - f(baseline)": ig.completeness.change.tolist(),
                "relative gap": ig.completeness.gap.tolist(),
            }
        )
        tables.append(table("integrated gradients: completeness", gaps))
    columns = ["method", "pos", "token", *(["head"] if first.values.ndim == 3 else []), "value"]
    tables.append(table("largest |scores| of example 0 by method", pd.concat(top_rows)[columns]))
    return StepOutput(summary=summary, figures=figures, tables=tables)
