"""Step ``probe``: linear probes on every layer (``mechinterp.probing``) for a built-in
dataset, with shuffled-label and control-task controls (Hewitt & Liang 2019). The split is
type-disjoint unless ``split: random``; selectivity is printed next to every accuracy.

Writes ``probes.safetensors`` + ``probes.json`` (``ProbeResult.save``), the accuracy plot and
a per-layer table.

Example config::

    - kind: probe
      dataset: number_agreement
      n: 400
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mechinterp.cli.schema import ProbeStep
from mechinterp.cli.steps.output import StepOutput, significant, table
from mechinterp.plotting import probe_accuracy
from mechinterp.probing import BUILT_IN, collect_activations, train_probes


def run(step: ProbeStep, context, out: Path) -> StepOutput:
    dataset = BUILT_IN[step.dataset](step.n, seed=step.seed)
    activations = collect_activations(context.model, dataset, hook=step.hook, layers=step.layers)
    result = train_probes(
        activations,
        kind=step.probe,
        split=step.split,
        max_epochs=step.max_epochs,
        controls=step.controls,
        seed=step.seed,
    )
    result.save(out / "probes")
    frame = pd.DataFrame(
        {"layer": result.layers, "test": result.score["test"].numpy(), "shuffled": result.shuffled.numpy()}
    )
    if result.control is not None:
        frame["control task"] = result.control.numpy()
        frame["selectivity"] = result.selectivity.numpy()
    best = result.layers.index(result.best_layer)
    split = "type-disjoint" if step.split == "types" else "random"
    summary = {"best layer": result.best_layer, "test score": significant(float(result.score["test"][best]))}
    if result.control is not None:
        summary["control task"] = significant(float(result.control[best]))
        summary["selectivity"] = significant(float(result.selectivity[best]))
    summary |= {"shuffled": significant(float(result.shuffled[best])), "chance": significant(result.chance)}
    return StepOutput(
        summary=summary,
        figures={"accuracy": probe_accuracy(result)},
        tables=[table(f"{step.probe} probes on {step.dataset} ({step.hook}, {split} split)", frame)],
    )
