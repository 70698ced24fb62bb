"""Circuits as Neuronpedia / circuit-tracer attribution graphs.

Neuronpedia's graph page and circuit-tracer's local viewer draw a graph of nodes placed by
layer and token position, linked by weighted links, over one prompt. ``to_neuronpedia_dict``
maps a circuit onto that layout (the writers are ``circuits.export.write_neuronpedia_json``
and ``write_graph_folder``). The rules it follows come from the readers' code: Neuronpedia's
upload schema and name check (``NAME_PATTERN``), its graph loader, circuit-tracer's pydantic
graph model and its viewer.

Example:
    >>> data = to_neuronpedia_dict(circuit, scan="gpt2-small", slug="ioi-eap")
    >>> [node["mechinterp_name"] for node in data["nodes"]][:3]
    ['input', 'a0.h1', 'a0.h3']
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from circuits.circuit import Circuit
from circuits.graph import Graph, Node
from circuits.positional import PositionalCircuit

NAME_PATTERN = re.compile(r"[a-zA-Z0-9_.-]+")
"""What Neuronpedia accepts as a graph's ``scan`` (its model id) and ``slug``."""


def sanitise_name(text: str) -> str:
    """``text`` with each run of characters outside ``[a-zA-Z0-9_.-]`` replaced by ``-``
    (``"/tmp/llama 7b"`` -> ``"tmp-llama-7b"``); ``"model"`` if nothing is left.

    Example:
        >>> sanitise_name("HuggingFaceTB/SmolLM2-135M")
        'HuggingFaceTB-SmolLM2-135M'
    """
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-") or "model"


def _checked_name(value: str, field: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{field} {value!r} is not a valid Neuronpedia name: use only letters, digits, '_', '.' "
            f"and '-' (sanitise_name({value!r}) gives {sanitise_name(str(value))!r})"
        )
    return value


def cantor_pair(layer: int, index: int) -> int:
    """The Cantor pairing of ``(layer, index)``: how graphs with ``schema_version: 1`` encode
    a node's ``feature`` (Neuronpedia decodes it back to the layer and the index).

    Example:
        >>> cantor_pair(1, 3)
        13
    """
    return (layer + index) * (layer + index + 1) // 2 + index


_NEURONPEDIA_TYPES = {
    "input": "embedding",
    "head": "attention head",
    "kv": "key/value head",
    "mlp": "mlp",
    "logits": "logit",
}


Place = tuple[str, int | None, int | None]


def _place(node: Node, channel: str | None = None, grouped: bool = False) -> Place:
    """The Neuronpedia node for ``node`` as ``(kind, layer, head)``; as the target of a key or
    value edge under GQA, the key/value head's own node (``kind="kv"``)."""
    if grouped and channel in ("k", "v"):
        return ("kv", node.layer, node.head)
    return (node.kind, node.layer, node.head)


def _place_order(graph: Graph) -> Callable[[Place], tuple[int, int, int]]:
    """Sort key: the input, then per layer its query heads, key/value heads and MLP, then the logits."""

    def key(place: Place) -> tuple[int, int, int]:
        kind, layer, head = place
        if layer is None:
            return (-1 if kind == "input" else graph.n_layers, 0, 0)
        return (layer, ("head", "kv", "mlp").index(kind), head or 0)

    return key


def _neuronpedia_node(
    place: Place, graph: Graph, prompt: dict, position: int | None = None, span: str | None = None
) -> dict[str, Any]:
    """One node in the layout ``to_neuronpedia_dict`` describes, at ``position`` (default:
    the prompt's read position) and labelled with its ``span`` (position-aware circuits)."""
    node = _neuronpedia_node_at(
        place, graph, prompt if position is None else {**prompt, "position": position}
    )
    if span is not None:
        node["clerp"] = f"{node['clerp']} @ {span}"
        node["mechinterp_name"] = f"{node['mechinterp_name']}@{span}"
        node["mechinterp_span"] = span
    return node


def _neuronpedia_node_at(place: Place, graph: Graph, prompt: dict) -> dict[str, Any]:
    kind, layer, head = place
    position = prompt["position"]
    node: dict[str, Any] = {"ctx_idx": position, "feature_type": _NEURONPEDIA_TYPES[kind]}
    if kind == "input":
        node_id = f"E_{prompt['token_ids'][position]}_{position}"
        node |= {"feature": position, "layer": "E", "clerp": "input (token and position embeddings)"}
        name = "input"
    elif kind == "logits":
        node_id = f"{graph.n_layers + 1}_{prompt['answer_id']}_{position}"
        node |= {
            "feature": prompt["answer_id"],
            "layer": str(graph.n_layers + 1),
            "clerp": f'Output "{prompt["answer"]}" (p={prompt["answer_prob"]:.3f})',
            "token_prob": prompt["answer_prob"],
            "is_target_logit": True,
        }
        name = "logits"
    else:
        # index within the layer: query heads 0..H-1, the MLP H, key/value heads H+1..
        index = head if kind == "head" else graph.n_heads if kind == "mlp" else graph.n_heads + 1 + head
        node_id = f"{layer}_{index}_{position}"
        if kind == "kv":
            group = graph.n_heads // graph.n_kv_heads
            name = f"a{layer}.kv{head}"
            first, last = head * group, (head + 1) * group - 1
            clerp = f"{name} (key/value head {head}: keys and values of a{layer}.h{first}..h{last})"
        else:
            name = clerp = Node(kind, layer, head).name
        node |= {"feature": cantor_pair(layer, index), "layer": str(layer), "clerp": clerp}
    return {"node_id": node_id, "jsNodeId": node_id, **node, "mechinterp_name": name}


def _prompt_of(circuit: Circuit | PositionalCircuit) -> dict:
    prompt = circuit.metadata.get("prompt")
    keys = {"text", "tokens", "token_ids", "position", "answer", "answer_id", "answer_prob"}
    if not isinstance(prompt, dict) or not keys <= set(prompt):
        raise ValueError(
            "Neuronpedia graphs show the prompt and the answer's probability, but this circuit has no "
            "metadata['prompt'] record (circuits from circuits.ALGORITHMS have one). Add it with "
            "dataclasses.replace(circuit, metadata=circuit.metadata | "
            "{'prompt': circuits.prompt_record(model, data, metric)})"
        )
    if len(prompt["tokens"]) < 2:
        raise ValueError(
            f"the prompt has {len(prompt['tokens'])} token(s); circuit-tracer's viewer hides every node of "
            "a one-token graph (it drops features present at more than 2/3 of the tokens)"
        )
    return prompt


def _span_positions(circuit: PositionalCircuit) -> tuple[dict[str, int], list[str]]:
    """Each span's position in the first prompt (its last position there), and the spans
    that do not occur in it."""
    ids = circuit.spans.ids[0].tolist()
    where = {circuit.spans.labels[span]: position for position, span in enumerate(ids)}
    return where, [label for label in circuit.spans.labels if label not in where]


def to_neuronpedia_dict(
    circuit: Circuit | PositionalCircuit, *, scan: str | None = None, slug: str | None = None
) -> dict:
    """The in-graph part of the circuit as a Neuronpedia / circuit-tracer attribution graph.

    ``scan`` is Neuronpedia's model id (``gpt2-small``, ``gemma-2-2b``, ...; default: the
    sanitised model name) and ``slug`` the graph's name (default
    ``<model>-<algorithm>-<8 random hex digits>``, new on every call: Neuronpedia replaces a
    graph of the same ``(scan, slug)``). Both must match ``NAME_PATTERN``.

    Mapping (``schema_version: 1``). Our graph has no positions: a node stands for its
    component at every position, and all nodes sit at the position the metric reads
    (``ctx_idx``) of the circuit's first clean prompt (``metadata["prompt"]``).

    ===============  ===================================================================
    node             ``node_id`` (= ``jsNodeId``), ``layer``, ``feature``, ``clerp``
    ===============  ===================================================================
    input            ``E_<token id>_<pos>``, ``"E"``, the position, (the viewers label it)
    head ``a3.h1``   ``3_1_<pos>``, ``"3"``, ``cantor_pair(3, 1)``, ``"a3.h1"``
    MLP ``m3``       ``3_<H>_<pos>``, ``"3"``, ``cantor_pair(3, H)``, ``"m3"`` (H heads)
    GQA k/v head j   ``3_<H+1+j>_<pos>``, ``"3"``, ``cantor_pair(3, H+1+j)``, ``"a3.kvj (...)"``
    logits           ``<L+1>_<answer id>_<pos>``, ``"<L+1>"``, the answer id,
                     ``Output "<answer>" (p=<probability>)``, plus ``token_prob``
    ===============  ===================================================================

    Every node also carries ``mechinterp_name`` (``input``, ``a3.h1``, ``a3.kv0``, ``m3``,
    ``logits``), and ``metadata.mechinterp`` the model's sizes and the circuit's metadata.

    A position-aware circuit (``circuits.positional.PositionalCircuit``) has a node per
    component and span: ``ctx_idx`` is the span's position in the first prompt (its last
    one, for a span of several positions), the ``clerp`` ends in ``@ <span>``, the node has
    ``mechinterp_span``, and a link joins a source at a span to its destination at the same
    span (the logits stay at the read position). Spans that do not occur in the first
    prompt cannot be placed: their edges are left out and listed in
    ``metadata.mechinterp.spans_not_in_prompt``.

    A link joins a source node to the node an in-graph edge ends at; ``weight`` is the sum
    of the scores of that pair's channels (the q, k and v edges into one head of an MHA
    model; they can cancel), and ``channel_weights`` keeps each channel's score. Under GQA,
    key and value edges end at the key/value head's own node, so a head's link sums only
    its query edge. Nodes carry no ``influence``, so ``metadata.node_threshold`` is left out
    (the viewers would prune every node without one).

    Raises ``ValueError`` for a circuit without in-graph edges, without a node above layer 0
    (Neuronpedia's loader fails with "No layer found"), without a prompt record, with a
    one-token prompt, or for an invalid ``scan`` or ``slug``.

    Example:
        >>> data = to_neuronpedia_dict(circuit, scan="gpt2-small", slug="ioi-eap")
        >>> data["nodes"][-1]["clerp"]
        'Output " Mary" (p=0.624)'
    """
    graph = circuit.graph
    edges = circuit.edges_in_graph()  # (edge, span) pairs for a position-aware circuit
    if not edges:
        raise ValueError("the circuit has no in-graph edges; there is no graph to show")
    prompt = _prompt_of(circuit)
    positional = isinstance(circuit, PositionalCircuit)
    where, missing = _span_positions(circuit) if positional else ({}, [])
    entries = (  # (edge, score, span)
        [
            (edge, float(circuit.scores[graph.edge_index[edge], circuit.spans.labels.index(span)]), span)
            for edge, span in edges
            if span in where
        ]
        if positional
        else [(edge, float(circuit.scores[graph.edge_index[edge]]), None) for edge in edges]
    )
    layers = [
        node.layer for edge, _, _ in entries for node in (edge.source, edge.target) if node.layer is not None
    ]
    if max(layers, default=0) == 0:
        raise ValueError(
            "every node of this circuit is in layer 0 (or is the input); Neuronpedia's graph loader "
            "needs a node above layer 0 and fails with 'No layer found' otherwise"
        )
    model_name = sanitise_name(graph.model_name)
    scan = _checked_name(model_name if scan is None else scan, "scan")
    algorithm = sanitise_name(str(circuit.metadata.get("algorithm", "circuit")))
    slug = _checked_name(f"{model_name}-{algorithm}-{uuid.uuid4().hex[:8]}" if slug is None else slug, "slug")

    grouped = graph.n_kv_heads < graph.n_heads
    read = prompt["position"] if positional else None
    places = {(("input", None, None), read), (("logits", None, None), read)}  # the viewers always show both
    links: dict[tuple, dict[str, Any]] = {}
    for edge, score, span in entries:
        at = None if span is None else where[span]
        source = (_place(edge.source), at)
        target = (_place(edge.target, edge.channel, grouped), read if edge.target.kind == "logits" else at)
        places |= {source, target}
        link = links.setdefault((source, target), {"weight": 0.0, "channel_weights": {}})
        link["weight"] += score
        link["channel_weights"][edge.channel] = score
    order = _place_order(graph)
    labels = circuit.spans.ids[0].tolist() if positional else []
    nodes = {
        (place, at): _neuronpedia_node(
            place, graph, prompt, at, None if at is None else circuit.spans.labels[labels[at]]
        )
        for place, at in sorted(places, key=lambda entry: (order(entry[0]), entry[1] or 0))
    }
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "transcoder_list": [],
            "prompt_tokens": list(prompt["tokens"]),
            "prompt": prompt["text"],
            "schema_version": 1,
            "info": {
                "description": f"{circuit.metadata.get('algorithm', 'circuit')} circuit of {graph.model_name}",
                "generator": {"name": "mechinterp"},
            },
            "mechinterp": {
                "model": {
                    "name": graph.model_name,
                    "n_layers": graph.n_layers,
                    "n_heads": graph.n_heads,
                    "n_kv_heads": graph.n_kv_heads,
                    "d_model": graph.d_model,
                },
                "metadata": circuit.metadata,
                **({"spans_not_in_prompt": missing} if positional else {}),
            },
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": list(nodes.values()),
        "links": [
            {"source": nodes[source]["node_id"], "target": nodes[target]["node_id"], **link}
            for (source, target), link in links.items()
        ],
    }
