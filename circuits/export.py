"""Circuit files: our JSON (lossless, versioned), EAP-IG edge JSON, Graphviz DOT text.

Our schema (``format: "mechinterp-circuit"``, ``version: 1``)::

    {"format": "mechinterp-circuit", "version": 1, "model": {name, n_layers, n_heads},
     "metadata": {...}, "nodes": ["input", "a0.h0", ..., "logits"],
     "edges": [{"name": "input->a0.h0<q>", "score": 0.12, "in_graph": true}, ...]}

Edges follow the graph's order, so reading a file back rebuilds the same graph. Every write
goes to a temporary file in the same folder that is then renamed: an interrupted export
never leaves a partial file behind.

Example:
    >>> write_json(circuit, "runs/ioi/circuit.json"); circuit = read_json("runs/ioi/circuit.json", model)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from circuits.circuit import Circuit
from circuits.graph import Graph

FORMAT, VERSION = "mechinterp-circuit", 1


def _atomic_write(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def to_json_dict(circuit: Circuit) -> dict:
    graph = circuit.graph
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": graph.model_name, "n_layers": graph.n_layers, "n_heads": graph.n_heads},
        "metadata": circuit.metadata,
        "nodes": [node.name for node in graph.nodes],
        "edges": [
            {"name": e.name, "score": float(s), "in_graph": bool(k)}
            for e, s, k in zip(graph.edges, circuit.scores.tolist(), circuit.in_graph.tolist(), strict=True)
        ],
    }


def write_json(circuit: Circuit, path: str | Path) -> Path:
    """Our lossless JSON (scores are written as Python floats: float64 round trip)."""
    return _atomic_write(path, json.dumps(to_json_dict(circuit), indent=1))


def read_json(path: str | Path, model) -> Circuit:
    """Read our JSON for ``model``; the file must describe that model's graph exactly."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a mechinterp circuit file (format {data.get('format') if isinstance(data, dict) else None!r})"
        )
    if data.get("version") != VERSION:
        raise ValueError(
            f"{path}: unsupported circuit file version {data.get('version')!r} (this reads {VERSION})"
        )
    graph = Graph.from_model(model)
    names = [edge["name"] for edge in data["edges"]]
    expected = [edge.name for edge in graph.edges]
    if names != expected:
        unknown = sorted(set(names) - set(expected))[:5]
        raise ValueError(
            f"{path} describes a different graph ({data['model']['name']!r}, {len(names)} edges) than "
            f"{model.architecture.model_name!r} ({len(expected)} edges)"
            + (f"; unknown edges: {unknown}" if unknown else "")
        )
    scores = torch.tensor([edge["score"] for edge in data["edges"]], dtype=torch.float64)
    in_graph = torch.tensor([edge["in_graph"] for edge in data["edges"]], dtype=torch.bool)
    return Circuit(graph, scores, in_graph, data.get("metadata", {}))


def write_eap_ig_json(circuit: Circuit, path: str | Path) -> Path:
    """EAP-IG's layout: ``{"edges": {name: {"score", "in_graph"}}, "nodes": {name: {"in_graph"}}}``."""
    nodes = circuit.nodes_in_graph()
    data = {
        "cfg": {"n_layers": circuit.graph.n_layers, "n_heads": circuit.graph.n_heads},
        "nodes": {node.name: {"in_graph": node in nodes} for node in circuit.graph.nodes},
        "edges": {
            e.name: {"score": float(s), "in_graph": bool(k)}
            for e, s, k in zip(
                circuit.graph.edges, circuit.scores.tolist(), circuit.in_graph.tolist(), strict=True
            )
        },
    }
    return _atomic_write(path, json.dumps(data, indent=1))


def to_dot(circuit: Circuit) -> str:
    """Graphviz DOT text of the in-graph edges (edge label: channel; pen width: |score|)."""
    edges = circuit.edges_in_graph()
    scale = float(circuit.scores.abs().max()) or 1.0
    lines = ["digraph circuit {", "  rankdir=BT;", "  node [shape=box, style=rounded];"]
    for node in sorted(circuit.nodes_in_graph(), key=circuit.graph.nodes.index):
        lines.append(f'  "{node.name}";')
    for edge in edges:
        score = float(circuit.scores[circuit.graph.edge_index[edge]])
        width = 0.5 + 3 * abs(score) / scale
        color = "blue" if score >= 0 else "red"
        label = f' label="{edge.channel}"' if edge.channel in ("q", "k", "v") else ""
        lines.append(
            f'  "{edge.source.name}" -> "{edge.target.name}" [penwidth={width:.2f}, color={color}{label}];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(circuit: Circuit, path: str | Path) -> Path:
    return _atomic_write(path, to_dot(circuit))
