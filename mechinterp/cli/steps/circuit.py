"""Step ``circuit``: discover a circuit (``circuits.ALGORITHMS``) and measure its
faithfulness curve.

EAP (Syed et al. 2023) is one forward pair and one backward pass, so it suits a 30-layer
model on a CPU; EAP-IG (Hanna et al. 2024) repeats the backward pass ``ig_steps`` times; exact
edge patching and ACDC (Conmy et al. 2023) run batched forwards per edge or destination and
are slow on large graphs. The circuit keeps the ``top_n`` edges (or the edges between the
``top_n`` best nodes), or the edges ACDC did not remove, pruned to input-to-logits paths. Faithfulness (1 = the full model's metric, 0 = the
corrupt run's) is measured for exactly the circuit's edges, and as a curve over the top-``n``
edges by score at evenly spaced ``n`` (plus the selection size before pruning); edges
outside are patched with the corrupt run's values.

Writes ``circuit.json`` (``circuits.write_json``), ``faithfulness.json``, the circuit and
faithfulness figures and a table of the strongest in-circuit edges.

Example config::

    - kind: circuit
      algorithm: eap
      top_n: 200
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch

import circuits
from mechinterp.cli.schema import CircuitStep
from mechinterp.cli.steps.output import StepOutput, significant, table
from mechinterp.plotting.circuits import circuit_figure, faithfulness_figure


def algorithm_config(step: CircuitStep):
    """The algorithm's own config (``circuits.CONFIGS``) from the step's settings it has."""
    config_class = circuits.CONFIGS[step.algorithm]
    settings = {
        "top_n": step.top_n,
        "level": step.level,
        "selection": step.selection,
        "threshold": step.threshold,
        "steps": step.ig_steps,
        "rules": tuple(step.relp_rules),
    }
    names = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{key: value for key, value in settings.items() if key in names})


def edge_counts(step: CircuitStep, selected: int, n_edges: int) -> list[int]:
    """Evenly spaced edge counts from 0 to the curve's end, plus the circuit's own size."""
    end = min(step.faithfulness_max_edges or 4 * max(selected, 1), n_edges)
    spaced = torch.linspace(0, end, step.faithfulness_points).round().long().tolist()
    return sorted(set(spaced) | {min(selected, n_edges)})


def run(step: CircuitStep, context, out: Path) -> StepOutput:
    pairs, model = context.pairs, context.model
    graph = circuits.Graph.from_model(model)
    data = circuits.PairedData(pairs.clean, pairs.corrupt, pairs.attention_mask)
    circuit = circuits.ALGORITHMS[step.algorithm](
        model, data, context.metric, graph, config=algorithm_config(step)
    )
    selected = step.top_n if "acdc" not in step.algorithm and step.level == "edge" else circuit.n_edges
    counts = edge_counts(step, selected, len(graph.edges))
    curve = circuits.faithfulness_curve(
        model,
        pairs.clean,
        pairs.corrupt,
        circuit,
        context.metric,
        counts,
        attention_mask=pairs.attention_mask,
    )
    own = circuits.evaluate_circuit(
        model, pairs.clean, pairs.corrupt, circuit, context.metric, attention_mask=pairs.attention_mask
    ).faithfulness
    circuits.write_json(circuit, out / "circuit.json")
    at_selection = float(curve.faithfulness[curve.counts.index(min(selected, len(graph.edges)))])
    curve_data = {
        "counts": curve.counts,
        "values": curve.values.tolist(),
        "faithfulness": curve.faithfulness.tolist(),
        "full_model": curve.full_model,
        "all_patched": curve.all_patched,
        "n_edges_total": curve.n_edges_total,
        "area": curve.area,
        "circuit_edges": circuit.n_edges,
        "circuit_faithfulness": own,
    }
    (out / "faithfulness.json").write_text(json.dumps(curve_data, indent=1))
    edges = circuit.edges_in_graph()
    scores = [float(circuit.scores[graph.edge_index[edge]]) for edge in edges]
    strongest = pd.DataFrame({"edge": [e.name for e in edges], "score": scores})
    strongest = strongest.reindex(strongest["score"].abs().sort_values(ascending=False).index).head(20)
    curve_table = pd.DataFrame({"edges kept": curve.counts, "faithfulness": curve.faithfulness.numpy()})
    return StepOutput(
        summary={
            "algorithm": step.algorithm,
            "edges": circuit.n_edges,
            "nodes": len(circuit.nodes_in_graph()),
            "faithfulness": significant(own),
            f"top-{selected} faithfulness": significant(at_selection),
        },
        figures={
            "circuit": circuit_figure(
                circuit, title=f"{step.label}: {step.algorithm} circuit ({circuit.n_edges} edges)"
            ),
            "faithfulness": faithfulness_figure(curve),
        },
        tables=[
            table(
                f"strongest {len(strongest)} of the circuit's {circuit.n_edges} edges",
                strongest.reset_index(drop=True),
            ),
            table("faithfulness of the top-n edges by score", curve_table),
        ],
    )
