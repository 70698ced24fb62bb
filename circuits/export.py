"""Circuit files: our JSON (lossless, versioned), EAP-IG edge JSON, Neuronpedia-style graph JSON,
GraphML and Graphviz DOT text. (The interactive HTML page is a figure:
``mechinterp.plotting.write_circuit_html``.)

``write(circuit, path, to=...)`` picks a writer from ``WRITERS`` by name; every writer is
also public on its own. Every write goes to a temporary file in the destination folder that
is then renamed over the destination: an interrupted export never leaves a partial file (an
existing file keeps its old content).

Our schema (``format: "mechinterp-circuit"``, ``version: 1``)::

    {"format": "mechinterp-circuit", "version": 1,
     "model": {"name", "n_layers", "n_heads", "d_model"},
     "metadata": {...},                       # algorithm, config, prompt, ...
     "nodes": ["input", "a0.h0", ..., "logits"],
     "edges": [{"name": "input->a0.h0<q>", "score": 0.12, "in_graph": true}, ...]}

Nodes and edges follow the graph's order and use EAP-IG names (``a3.h1->m5``,
``input->a0.h0<q>``). The names carry the whole graph (grouped key/value heads, parallel
blocks, attention-only models), so ``read_json`` rebuilds the exact ``Graph`` from the file
alone; given a model, it checks the file describes that model's graph. Scores are written
with ``repr`` precision, so float64 scores round-trip exactly. (``d_model`` is optional
when reading: files written before it was added lack it.)

EAP-IG JSON is what ``Graph.from_json`` of hannamw/EAP-IG reads: ``cfg`` (``n_layers``,
``n_heads``, ``d_model``, ``parallel_attn_mlp``), ``nodes`` and ``edges`` by name. EAP-IG
only knows per-query-head keys and values, so grouped-query (GQA) models are un-grouped:
an edge into key/value head ``j`` is written once per query head of ``j``'s group, each
with the group's score (summing EAP-IG scores over a group counts that edge once per head).

Neuronpedia JSON is the attribution-graph layout that Neuronpedia's graph page and
circuit-tracer's local viewer read; ``circuits.neuronpedia.to_neuronpedia_dict`` documents
the mapping.

Example:
    >>> write(circuit, "runs/ioi/circuit.json")                 # our JSON
    >>> write(circuit, "runs/ioi/circuit.graphml", to="graphml")  # networkx, Gephi, Cytoscape
    >>> circuit = read_json("runs/ioi/circuit.json")            # no model needed
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from circuits.circuit import Circuit
from circuits.graph import Edge, Graph, Node
from circuits.neuronpedia import to_neuronpedia_dict

FORMAT, VERSION = "mechinterp-circuit", 1


def _atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Run ``write(temporary_path)`` and rename the result to ``path``; on any failure the
    temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it owner-only; give it a plain file's mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file renamed over it: an
    interrupted write leaves ``path`` as it was. Every text writer here uses it (and
    ``mechinterp.plotting.write_circuit_html``).

    Example:
        >>> write_text_atomically("runs/ioi/notes.txt", "hello")
    """
    return _atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def to_json_dict(circuit: Circuit) -> dict:
    """The circuit as our JSON schema (see the module docstring)."""
    graph = circuit.graph
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "name": graph.model_name,
            "n_layers": graph.n_layers,
            "n_heads": graph.n_heads,
            "d_model": graph.d_model,
        },
        "metadata": circuit.metadata,
        "nodes": [node.name for node in graph.nodes],
        "edges": [
            {"name": e.name, "score": float(s), "in_graph": bool(k)}
            for e, s, k in zip(graph.edges, circuit.scores.tolist(), circuit.in_graph.tolist(), strict=True)
        ],
    }


def write_json(circuit: Circuit, path: str | Path) -> Path:
    """Our lossless JSON (scores are written as Python floats: float64 round trip).

    Example:
        >>> write_json(circuit, "runs/ioi/circuit.json")
    """
    return write_text_atomically(path, json.dumps(to_json_dict(circuit), indent=1))


def _require(container: dict, key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    """``container[key]``, which must exist and be a ``kind``; ``where`` prefixes the field name."""
    if key not in container:
        raise ValueError(f"{path}: missing field {where}{key!r}")
    value, kinds = container[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # bool is an int
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{path}: field {where}{key!r} must be {names}, got {type(value).__name__}")
    return value


def _load_circuit_json(path: Path) -> dict:
    """Parse and check the top-level layout of our JSON; every problem is a ``ValueError``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not a mechinterp circuit file (format {found!r}, expected {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ValueError(
            f"{path}: unsupported circuit file version {data.get('version')!r} (this reads {VERSION})"
        )
    info = _require(data, "model", dict, "", path)
    _require(info, "name", str, "model.", path)
    _require(info, "n_layers", int, "model.", path)
    _require(info, "n_heads", int, "model.", path)
    if info.get("d_model") is not None:
        _require(info, "d_model", int, "model.", path)
    _require(data, "metadata", dict, "", path)
    nodes = _require(data, "nodes", list, "", path)
    edges = _require(data, "edges", list, "", path)
    for index, node in enumerate(nodes):
        if not isinstance(node, str):
            raise ValueError(f"{path}: nodes[{index}] must be a node name, got {node!r}")
    for index, edge in enumerate(edges):
        if not isinstance(edge, dict):
            raise ValueError(f"{path}: edges[{index}] must be an object, got {type(edge).__name__}")
        _require(edge, "name", str, f"edges[{index}].", path)
        _require(edge, "score", (int, float), f"edges[{index}].", path)
        _require(edge, "in_graph", bool, f"edges[{index}].", path)
    return data


def _parse_edge(name: str, nodes: dict[str, Node]) -> Edge | None:
    """The edge an EAP-IG edge name (``a3.h1->m5``, ``input->a0.h0<q>``) denotes among ``nodes``,
    or ``None`` if it names no valid edge."""
    source, _, target = name.partition("->")
    channel = None
    if target.endswith(">") and "<" in target:
        target, _, channel = target[:-1].partition("<")
    if source not in nodes or target not in nodes:
        return None
    kind = nodes[target].kind
    valid = ("q", "k", "v") if kind == "head" else (None,) if kind in ("mlp", "logits") else ()
    if channel not in valid:
        return None
    edge = Edge(nodes[source], nodes[target], channel or kind)
    return edge if edge.name == name else None


def _graph_from_file(data: dict, path: Path) -> Graph:
    """The graph a file describes, rebuilt from its node and edge names alone."""
    info = data["model"]
    n_layers, n_heads = info["n_layers"], info["n_heads"]
    possible = [Node("input"), Node("logits")]
    for layer in range(n_layers):
        possible += [Node("head", layer, head) for head in range(n_heads)] + [Node("mlp", layer)]
    by_name = {node.name: node for node in possible}
    unknown = [name for name in data["nodes"] if name not in by_name]
    if unknown:
        raise ValueError(
            f"{path}: node names {unknown[:5]} do not exist in a {n_layers}-layer, {n_heads}-head model"
        )
    for kind, names in (("node", data["nodes"]), ("edge", [edge["name"] for edge in data["edges"]])):
        if len(set(names)) != len(names):
            repeated = sorted(name for name, count in Counter(names).items() if count > 1)[:5]
            raise ValueError(f"{path}: {kind} names appear more than once: {repeated}")
    nodes = {name: by_name[name] for name in data["nodes"]}
    order = {name: index for index, name in enumerate(nodes)}
    edges = [_parse_edge(edge["name"], nodes) for edge in data["edges"]]
    bad = [
        raw["name"]
        for raw, edge in zip(data["edges"], edges, strict=True)
        if edge is None or order[edge.source.name] >= order[edge.target.name]
    ]
    if bad:
        raise ValueError(
            f"{path}: edges {bad[:5]} are not edges between the file's nodes (EAP-IG names like "
            "'a0.h1->m1', 'input->a1.h0<q>', from an earlier node to a later one)"
        )
    return Graph(
        tuple(nodes.values()),
        tuple(edges),
        info["name"],
        n_layers,
        n_heads,
        {edge: index for index, edge in enumerate(edges)},
        info.get("d_model"),
    )


def read_json(path: str | Path, model=None) -> Circuit:
    """Read our JSON. With ``model``, the file must describe that model's graph exactly; without
    it, the graph is rebuilt from the file alone (equal to ``Graph.from_model`` of its model).

    Raises ``ValueError`` naming the problem: invalid JSON, another format or version, a
    missing or mistyped field, or edges that do not match the graph.

    Example:
        >>> circuit = read_json("runs/ioi/circuit.json")
        >>> circuit = read_json("runs/ioi/circuit.json", model)   # also checks it fits model
    """
    path = Path(path)
    data = _load_circuit_json(path)
    if model is None:
        graph = _graph_from_file(data, path)
    else:
        graph = Graph.from_model(model)
        if data["model"].get("d_model") not in (None, graph.d_model):
            raise ValueError(
                f"{path} describes a model with d_model {data['model']['d_model']}, "
                f"{model.architecture.model_name!r} has {graph.d_model}"
            )
        names = [edge["name"] for edge in data["edges"]]
        expected = [edge.name for edge in graph.edges]
        if names != expected or data["nodes"] != [node.name for node in graph.nodes]:
            unknown = sorted(set(names) - set(expected))[:5]
            raise ValueError(
                f"{path} describes a different graph ({data['model']['name']!r}, {len(names)} edges) than "
                f"{model.architecture.model_name!r} ({len(expected)} edges)"
                + (f"; unknown edges: {unknown}" if unknown else "")
            )
    scores = torch.tensor([float(edge["score"]) for edge in data["edges"]], dtype=torch.float64)
    in_graph = torch.tensor([edge["in_graph"] for edge in data["edges"]], dtype=torch.bool)
    return Circuit(graph, scores, in_graph, data["metadata"])


def to_eap_ig_dict(circuit: Circuit) -> dict:
    """The circuit in EAP-IG's JSON layout (``Graph.from_json`` of hannamw/EAP-IG reads it):
    ``{"cfg": {"n_layers", "n_heads", "d_model", "parallel_attn_mlp"}, "nodes": {name:
    {"in_graph"}}, "edges": {name: {"score", "in_graph"}}}``. Grouped key/value heads are
    un-grouped (module docstring); a node is in the graph when an in-graph edge touches it.

    Raises ``ValueError`` for a graph without ``d_model`` (read from an old file without a
    model: ``read_json(path, model)`` fills it in).

    Example:
        >>> to_eap_ig_dict(circuit)["edges"]["input->a0.h3<k>"]   # GQA: key/value head 1's score
        {'score': 0.031, 'in_graph': False}
    """
    graph = circuit.graph
    if graph.d_model is None:
        raise ValueError(
            "EAP-IG's cfg needs d_model, which this graph lacks (it was read from a file written "
            "before d_model was recorded); read it with read_json(path, model) to take it from the model"
        )
    group = graph.n_heads // graph.n_kv_heads
    edges: dict[str, dict[str, Any]] = {}
    touched: set[str] = set()
    for edge, score, keep in zip(
        graph.edges, circuit.scores.tolist(), circuit.in_graph.tolist(), strict=True
    ):
        targets = [edge.target]
        if edge.channel in ("k", "v"):  # key/value head j serves query heads j*group .. (j+1)*group-1
            heads = range(edge.target.head * group, (edge.target.head + 1) * group)
            targets = [Node("head", edge.target.layer, head) for head in heads]
        for target in targets:
            name = Edge(edge.source, target, edge.channel).name
            edges[name] = {"score": float(score), "in_graph": bool(keep)}
            if keep:
                touched |= {edge.source.name, target.name}
    cfg = {
        "n_layers": graph.n_layers,
        "n_heads": graph.n_heads,
        "d_model": graph.d_model,
        "parallel_attn_mlp": graph.parallel_attn_mlp,
    }
    nodes = {node.name: {"in_graph": node.name in touched} for node in graph.nodes}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def write_eap_ig_json(circuit: Circuit, path: str | Path) -> Path:
    """EAP-IG's JSON (``to_eap_ig_dict``); load it with EAP-IG's ``Graph.from_json(path)``.

    Example:
        >>> write_eap_ig_json(circuit, "runs/ioi/circuit.eap_ig.json")
    """
    return write_text_atomically(path, json.dumps(to_eap_ig_dict(circuit), indent=1))


def _node_attributes(node: Node) -> dict[str, Any]:
    """A node's kind, layer and head, leaving out the ones it does not have (GraphML values
    must be scalars)."""
    attributes: dict[str, Any] = {"kind": node.kind}
    if node.layer is not None:
        attributes["layer"] = node.layer
    if node.head is not None:
        attributes["head"] = node.head
    return attributes


def to_networkx(circuit: Circuit) -> nx.MultiDiGraph:
    """The whole graph as a ``networkx.MultiDiGraph``: nodes keyed by name with ``kind``,
    ``layer``, ``head`` (where defined) and ``in_graph``; edges keyed by their EAP-IG name with
    ``channel``, ``score`` and ``in_graph``. Graph attributes: model name, sizes and the
    metadata as JSON text. Every attribute is a scalar, so Gephi and yEd read it."""
    graph = circuit.graph
    result = nx.MultiDiGraph(
        model=graph.model_name,
        n_layers=graph.n_layers,
        n_heads=graph.n_heads,
        metadata=json.dumps(circuit.metadata),
    )
    kept = circuit.nodes_in_graph()
    for node in graph.nodes:
        result.add_node(node.name, **_node_attributes(node), in_graph=node in kept)
    for edge, score, keep in zip(
        graph.edges, circuit.scores.tolist(), circuit.in_graph.tolist(), strict=True
    ):
        result.add_edge(
            edge.source.name,
            edge.target.name,
            key=edge.name,
            channel=edge.channel,
            score=float(score),
            in_graph=bool(keep),
        )
    return result


def write_graphml(circuit: Circuit, path: str | Path) -> Path:
    """GraphML of the whole graph (see ``to_networkx`` for the attributes).

    Example:
        >>> write_graphml(circuit, "circuit.graphml"); networkx.read_graphml("circuit.graphml")
    """
    result = to_networkx(circuit)
    return _atomic(path, lambda temporary: nx.write_graphml(result, temporary))


def write_neuronpedia_json(
    circuit: Circuit, path: str | Path, *, scan: str | None = None, slug: str | None = None
) -> Path:
    """The circuit as a Neuronpedia / circuit-tracer graph file (``to_neuronpedia_dict``).

    Example:
        >>> write_neuronpedia_json(circuit, "ioi.json", scan="gpt2-small", slug="ioi-eap")
    """
    return write_text_atomically(
        path, json.dumps(to_neuronpedia_dict(circuit, scan=scan, slug=slug), indent=1)
    )


def read_graph_metadata(folder: str | Path) -> dict[str, Any]:
    """``folder/graph-metadata.json`` (circuit-tracer's graph index), checked to be
    ``{"graphs": [{"slug": ...}, ...]}``; ``{"graphs": []}`` when the folder has none yet.

    Example:
        >>> [graph["slug"] for graph in read_graph_metadata("graphs")["graphs"]]
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; a graph folder must be a directory")
    index_path = folder / "graph-metadata.json"
    if not index_path.exists():
        return {"graphs": []}
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_path} is not JSON ({error}); is {folder} a graph folder?") from None
    graphs = index.get("graphs") if isinstance(index, dict) else None
    if not isinstance(graphs, list) or not all(isinstance(g, dict) and "slug" in g for g in graphs):
        raise ValueError(
            f'{index_path} is not a circuit-tracer graph index ({{"graphs": [{{"slug": ...}}, ...]}}); '
            "write the graph to another folder"
        )
    return index


def add_graph_metadata(folder: str | Path, entry: dict[str, Any], *, replace: bool = True) -> Path:
    """Add ``entry`` (a graph file's ``metadata``) to ``folder/graph-metadata.json``, the index
    circuit-tracer's local viewer lists graphs from (``{"graphs": [metadata, ...]}``): other
    graphs' entries are kept; an entry with the same ``slug`` is replaced, or, with
    ``replace=False``, refused. Returns the index's path.

    Raises:
        ValueError: the index is not ``{"graphs": [{"slug": ...}, ...]}``, or the slug is
            taken and ``replace`` is false.

    Example:
        >>> add_graph_metadata("graphs", {"slug": "ioi", "scan": "gpt2-small", "prompt": "..."})
    """
    index = read_graph_metadata(folder)
    index_path = Path(folder) / "graph-metadata.json"
    slug = entry["slug"]
    if not replace and any(graph["slug"] == slug for graph in index["graphs"]):
        raise ValueError(
            f"{index_path} already lists a graph with slug {slug!r}; choose another slug, or pass replace=True"
        )
    index["graphs"] = [graph for graph in index["graphs"] if graph["slug"] != slug] + [entry]
    return write_text_atomically(index_path, json.dumps(index, indent=1))


def write_graph_folder(
    circuit: Circuit, folder: str | Path, *, scan: str | None = None, slug: str | None = None
) -> Path:
    """Add the circuit to a folder that circuit-tracer's local viewer serves: the graph as
    ``folder/<slug>.json`` and its metadata in ``folder/graph-metadata.json`` (an entry
    with the same slug is replaced; ``add_graph_metadata``). Returns the graph file's path.

    Example:
        >>> write_graph_folder(circuit, "graphs", slug="ioi-eap")
        >>> # then: from circuit_tracer.frontend.local_server import serve; serve(data_dir="graphs")
    """
    folder = Path(folder)
    data = to_neuronpedia_dict(circuit, scan=scan, slug=slug)
    slug = data["metadata"]["slug"]
    if slug in (".", ".."):
        raise ValueError(f"slug {slug!r} cannot name a file")
    read_graph_metadata(folder)  # an unknown layout fails before anything is written
    path = write_text_atomically(folder / f"{slug}.json", json.dumps(data, indent=1))
    entry = {key: value for key, value in data["metadata"].items() if key != "mechinterp"}
    add_graph_metadata(folder, entry)
    return path


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
    """Graphviz DOT file (render with ``dot -Tsvg circuit.dot -o circuit.svg``)."""
    return write_text_atomically(path, to_dot(circuit))


Writer = Callable[..., Path]
WRITERS: dict[str, Writer] = {
    "json": write_json,
    "eap-ig": write_eap_ig_json,
    "neuronpedia": write_neuronpedia_json,
    "graphml": write_graphml,
    "dot": write_dot,
}


def write(circuit: Circuit, path: str | Path, to: str = "json", **options: Any) -> Path:
    """Write ``circuit`` to ``path`` in format ``to`` (a key of ``WRITERS``); ``options`` go
    to that writer (``scan`` and ``slug`` for ``"neuronpedia"``).

    Example:
        >>> for fmt, suffix in [("json", "json"), ("graphml", "graphml"), ("dot", "dot")]:
        ...     write(circuit, f"runs/ioi/circuit.{suffix}", to=fmt)
        >>> write(circuit, "ioi.neuronpedia.json", to="neuronpedia", scan="gpt2-small", slug="ioi")
    """
    if to not in WRITERS:
        hint = "; the interactive HTML page is mechinterp.plotting.write_circuit_html" if to == "html" else ""
        raise ValueError(f"unknown circuit format {to!r}; choose from {', '.join(WRITERS)}{hint}")
    return WRITERS[to](circuit, path, **options)
