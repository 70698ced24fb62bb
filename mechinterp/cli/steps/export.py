"""Step ``export``: write an earlier circuit step's circuit in several graph formats
(``FORMATS``: ``circuits.WRITERS`` (our JSON, EAP-IG JSON, Neuronpedia JSON, GraphML, DOT) and
the interactive HTML page of ``mechinterp.plotting.write_circuit_html``).

Example config::

    - kind: export
      circuit: circuit
      formats: [json, graphml, dot, neuronpedia, html]
      scan: gpt2-small        # optional: the neuronpedia file's Neuronpedia model id
      slug: ioi-eap           # optional: its graph name (default: new per export)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import circuits
from mechinterp.cli.schema import ExportStep
from mechinterp.cli.steps.output import StepOutput, table
from mechinterp.plotting import write_circuit_html

FORMATS = {**circuits.WRITERS, "html": write_circuit_html}

SUFFIXES = {
    "json": "json",
    "eap-ig": "eap_ig.json",
    "neuronpedia": "neuronpedia.json",
    "graphml": "graphml",
    "dot": "dot",
    "html": "html",
}


def export_circuit(
    circuit, folder: Path, formats: list[str], stem: str = "circuit", neuronpedia: dict | None = None
) -> list[Path]:
    """Write ``circuit`` as ``folder/stem.SUFFIX`` for each format; ``neuronpedia`` holds the
    ``scan`` and ``slug`` options of that format."""
    options = {"neuronpedia": neuronpedia or {}}
    return [
        FORMATS[fmt](circuit, folder / f"{stem}.{SUFFIXES[fmt]}", **options.get(fmt, {})) for fmt in formats
    ]


def run(step: ExportStep, context, out: Path) -> StepOutput:
    circuit = circuits.read_json(context.step_dir(step.circuit) / "circuit.json", context.model)
    paths = export_circuit(circuit, out, step.formats, neuronpedia={"scan": step.scan, "slug": step.slug})
    frame = pd.DataFrame(
        {"format": step.formats, "file": [p.name for p in paths], "bytes": [p.stat().st_size for p in paths]}
    )
    return StepOutput(
        summary={"formats": ", ".join(step.formats), "edges": circuit.n_edges},
        tables=[table(f"circuit of step {step.circuit!r} in {len(paths)} formats", frame)],
    )
