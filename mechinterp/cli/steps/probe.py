"""Step ``probe``: linear probes on every layer (``mechinterp.probing``) for a built-in
dataset, with shuffled-label and control-task controls (Hewitt & Liang 2019).

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

from mechinterp.cli.config import ProbeStep
from mechinterp.cli.steps.output import StepOutput, table
from mechinterp.plotting import probe_accuracy
from mechinterp.probing import BUILT_IN, collect_activations, train_probes


def run(step: ProbeStep, context, out: Path) -> StepOutput:
    dataset = BUILT_IN[step.dataset](step.n, seed=step.seed)
    activations = collect_activations(context.model, dataset, hook=step.hook, layers=step.layers)
    result = train_probes(
        activations, kind=step.probe, max_epochs=step.max_epochs, controls=step.controls, seed=step.seed
    )
    result.save(out / "probes")
    frame = pd.DataFrame(
        {"layer": result.layers, "test": result.score["test"].numpy(), "shuffled": result.shuffled.numpy()}
    )
    if result.control is not None:
        frame["control task"] = result.control.numpy()
        frame["selectivity"] = result.selectivity.numpy()
    best = result.layers.index(result.best_layer)
    return StepOutput(
        summary={
            "best layer": result.best_layer,
            "test score": round(float(result.score["test"][best]), 4),
            "shuffled": round(float(result.shuffled[best]), 4),
            "chance": round(result.chance, 4),
        },
        figures={"accuracy": probe_accuracy(result)},
        tables=[table(f"{step.probe} probes on {step.dataset} ({step.hook})", frame)],
    )
