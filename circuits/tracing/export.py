"""A pruned attribution graph as Neuronpedia / circuit-tracer graph JSON (``schema_version`` 1).

The same layout as ``circuits.neuronpedia`` writes for component circuits (its naming rules,
``cantor_pair`` and the file writer are reused), with real nodes at their own positions:

================  =============================================================================
node              ``node_id`` (= ``jsNodeId``), ``layer``, ``feature``, ``feature_type``
================  =============================================================================
feature           ``<layer>_<index>_<pos>``, ``"<layer>"``, ``cantor_pair(layer, index)``,
                  ``"cross layer transcoder"``; ``activation``
error (l, p)      ``<layer>_<d_tc>_<pos>`` (index one past the layer's last feature, so ids stay
                  unique and decode like a feature), ``cantor_pair(layer, d_tc)``,
                  ``"mlp reconstruction error"``
token p           ``E_<token id>_<pos>``, ``"E"``, ``p``, ``"embedding"``
logit k           ``<L+1>_<token id>_<last pos>``, ``"<L+1>"``, the token id, ``"logit"``,
                  ``clerp`` ``Output "<token>" (p=<probability>)``, ``token_prob``, ``is_target_logit``
================  =============================================================================

Given the prompt's ``Replacement``, each link also gets ``mechinterp_heads``: the attention heads
that carry most of it, ``[[layer, head, share], ...]`` (``HeadSplit.top``; an extra field the
viewers ignore), and ``metadata.mechinterp.head_split`` says how to read it.

With ``labels`` (``(layer, index) -> text``, e.g. explanations from ``mechinterp.explain``), a
feature's ``clerp`` is its label (the text the viewers show); without, it is empty.

Every node has ``influence`` (its cumulative influence share, ``PrunedGraph.cumulative_influence``),
so ``metadata.node_threshold`` is set and the viewers prune as circuit-tracer's graphs do. Links are
the kept edges ``{source, target, weight}``.

``write_graph_folder`` adds the graph to a folder circuit-tracer's local server serves
(``circuit_tracer.frontend.local_server.serve(data_dir=folder)``): the server answers
``/data/graph-metadata.json`` (the index its page lists graphs from, ``{"graphs": [metadata,
...]}``) and ``/graph_data/<slug>.json`` (one graph) from that folder. Feature example files are
not part of the folder: the server reads those from its own frontend assets (``features/<scan>``),
so the viewer shows our graphs without feature examples (our HTML view,
``mechinterp.plotting.write_attribution_graph_html``, shows them).

Example:
    >>> write_attribution_graph(prune_graph(graph), "graph.json", scan="gemma-2-2b", slug="dallas")
    >>> write_graph_folder(prune_graph(graph), "graphs", slug="dallas")  # then serve(data_dir="graphs")
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from circuits.export import add_graph_metadata, read_graph_metadata, write_text_atomically
from circuits.neuronpedia import _checked_name, cantor_pair, sanitise_name
from circuits.tracing.heads import HeadSplit, head_splits
from circuits.tracing.prune import PrunedGraph
from circuits.tracing.replacement import Replacement


def kept_head_splits(pruned: PrunedGraph, replacement: Replacement) -> list[HeadSplit]:
    """``head_splits`` of every kept edge of ``pruned``, in the order of ``pruned.edge_mask``
    (the order of the export's links): compute them once and pass them as ``splits`` to
    several writers.

    Example:
        >>> splits = kept_head_splits(pruned, Replacement(model, tc, graph.tokens[None]))
        >>> write_attribution_graph(pruned, "cat.json", splits=splits)
    """
    rows, cols = pruned.graph.edges.indices()
    kept = zip(rows[pruned.edge_mask].tolist(), cols[pruned.edge_mask].tolist(), strict=True)
    return head_splits(replacement, pruned.graph, list(kept))


def to_attribution_dict(
    pruned: PrunedGraph,
    *,
    scan: str | None = None,
    slug: str | None = None,
    replacement: Replacement | None = None,
    top_heads: int = 5,
    labels: Mapping[tuple[int, int], str] | None = None,
    splits: Sequence[HeadSplit] | None = None,
) -> dict[str, Any]:
    """The kept nodes and edges of ``pruned`` in Neuronpedia's graph layout (module docstring);
    with the prompt's ``replacement`` (or its ``kept_head_splits``, as ``splits``), each link's
    ``top_heads`` heads (``mechinterp_heads``); with ``labels`` (``(layer, index) -> text``),
    each labelled feature's ``clerp``.

    Example:
        >>> data = to_attribution_dict(pruned, slug="cat", labels={(1, 17): "cat-ish nouns"})
    """
    labels = {} if labels is None else labels
    graph = pruned.graph
    model_name = sanitise_name(graph.model_name)
    scan = _checked_name(model_name if scan is None else scan, "scan")
    slug = _checked_name(f"{model_name}-attribution-{uuid.uuid4().hex[:8]}" if slug is None else slug, "slug")
    if graph.n_pos < 2:
        raise ValueError(
            "circuit-tracer's viewer hides every node of a one-token graph; trace a longer prompt"
        )
    last = graph.n_pos - 1
    nodes: dict[int, dict[str, Any]] = {}
    for node in pruned.node_mask.nonzero()[:, 0].tolist():
        kind = graph.kind(node)
        entry: dict[str, Any]
        if kind == "feature":
            layer, pos, index = graph.features[node].tolist()
            entry = {
                "node_id": f"{layer}_{index}_{pos}",
                "feature": cantor_pair(layer, index),
                "layer": str(layer),
                "ctx_idx": pos,
                "feature_type": "cross layer transcoder",
                "clerp": str(labels.get((layer, index), "")),
                "activation": float(graph.activations[node]),
            }
        elif kind == "error":
            layer, pos = divmod(node - graph.n_features, graph.n_pos)
            width = graph.widths[layer]
            entry = {
                "node_id": f"{layer}_{width}_{pos}",
                "feature": cantor_pair(layer, width),
                "layer": str(layer),
                "ctx_idx": pos,
                "feature_type": "mlp reconstruction error",
                "clerp": f"error of layer {layer}'s MLP at position {pos}",
            }
        elif kind == "token":
            pos = node - graph.token_node(0)
            token = int(graph.tokens[pos])
            entry = {
                "node_id": f"E_{token}_{pos}",
                "feature": pos,
                "layer": "E",
                "ctx_idx": pos,
                "feature_type": "embedding",
                "clerp": "",
            }
        else:
            k = node - graph.logit_node(0)
            token, prob = int(graph.logit_tokens[k]), float(graph.logit_probabilities[k])
            entry = {
                "node_id": f"{graph.n_layers + 1}_{token}_{last}",
                "feature": token,
                "layer": str(graph.n_layers + 1),
                "ctx_idx": last,
                "feature_type": "logit",
                "clerp": f'Output "{graph.logit_strings[k]}" (p={prob:.3f})',
                "token_prob": prob,
                "is_target_logit": k == 0,
            }
        entry["jsNodeId"] = entry["node_id"]
        entry["influence"] = float(pruned.cumulative_influence[node])
        entry["mechinterp_name"] = graph.node_label(node)
        nodes[node] = entry
    rows, cols = graph.edges.indices()
    weights = graph.edges.values()
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(w)}
        for t, s, w in zip(
            rows[pruned.edge_mask].tolist(),
            cols[pruned.edge_mask].tolist(),
            weights[pruned.edge_mask].tolist(),
            strict=True,
        )
    ]
    mechinterp: dict[str, Any] = {
        "model": graph.model_name,
        "n_layers": graph.n_layers,
        "replacement_score": pruned.replacement_score,
        "completeness_score": pruned.completeness_score,
    }
    if splits is None and replacement is not None:
        splits = kept_head_splits(pruned, replacement)
    if splits is not None:
        kept = list(zip(rows[pruned.edge_mask].tolist(), cols[pruned.edge_mask].tolist(), strict=True))
        if [(split.target, split.source) for split in splits] != kept:
            raise ValueError(
                f"splits: {len(splits)} head splits that are not those of the {len(kept)} kept edges, "
                "in order; use kept_head_splits(pruned, replacement)"
            )
        for link, split in zip(links, splits, strict=True):
            link["mechinterp_heads"] = [[layer, head, share] for layer, head, share in split.top(top_heads)]
        mechinterp["head_split"] = (
            "mechinterp_heads: [layer, head, share] for the heads carrying most of a link; the shares of "
            "one layer's heads plus what bypasses that layer's attention add up to the link's weight"
        )
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "transcoder_list": [],
            "prompt_tokens": list(graph.token_strings),
            "prompt": "".join(graph.token_strings),
            "schema_version": 1,
            "node_threshold": pruned.node_threshold,
            "info": {
                "description": f"attribution graph of {graph.model_name} ({graph.transcoder_kind} transcoders)",
                "generator": {"name": "mechinterp"},
            },
            "mechinterp": mechinterp,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": list(nodes.values()),
        "links": links,
    }


def write_attribution_graph(
    pruned: PrunedGraph,
    path: str | Path,
    *,
    scan: str | None = None,
    slug: str | None = None,
    replacement: Replacement | None = None,
    labels: Mapping[tuple[int, int], str] | None = None,
    splits: Sequence[HeadSplit] | None = None,
) -> Path:
    """Write ``to_attribution_dict(pruned)`` to ``path`` (atomically, like every circuit export).

    Example:
        >>> write_attribution_graph(prune_graph(graph), "graphs/cat.json", slug="cat")
        >>> write_attribution_graph(pruned, "cat.json", replacement=Replacement(model, tc, graph.tokens[None]))
    """
    data = to_attribution_dict(
        pruned, scan=scan, slug=slug, replacement=replacement, labels=labels, splits=splits
    )
    return write_text_atomically(path, json.dumps(data, indent=1))


def write_graph_folder(
    pruned: PrunedGraph,
    folder: str | Path,
    *,
    scan: str | None = None,
    slug: str | None = None,
    replacement: Replacement | None = None,
    labels: Mapping[tuple[int, int], str] | None = None,
    splits: Sequence[HeadSplit] | None = None,
    replace: bool = False,
) -> Path:
    """Add ``pruned`` to a graph folder for circuit-tracer's local server (module docstring):
    ``folder/<slug>.json`` (``to_attribution_dict``) and its metadata appended to
    ``folder/graph-metadata.json``; the other graphs stay listed. Returns the graph file's path.

    Raises:
        ValueError: ``folder`` holds something other than a graph index, or ``slug`` is already
            in it (a listed slug or a ``<slug>.json`` file) and ``replace`` is false.

    Example:
        >>> write_graph_folder(prune_graph(trace(model, tc, "The cat sat on the")), "graphs", slug="cat")
        >>> write_graph_folder(prune_graph(trace(model, tc, "The dog ran to the")), "graphs", slug="dog")
        >>> from circuit_tracer.frontend.local_server import serve
        >>> server = serve(data_dir="graphs", port=8046)   # http://localhost:8046/index.html
    """
    folder = Path(folder)
    data = to_attribution_dict(
        pruned, scan=scan, slug=slug, replacement=replacement, labels=labels, splits=splits
    )
    slug = data["metadata"]["slug"]
    if slug in (".", ".."):
        raise ValueError(f"slug {slug!r} cannot name a file")
    listed = {graph["slug"] for graph in read_graph_metadata(folder)["graphs"]}
    path = folder / f"{slug}.json"
    if not replace and (slug in listed or path.exists()):
        raise ValueError(
            f"{folder} already has a graph with slug {slug!r}; choose another slug, or pass replace=True"
        )
    write_text_atomically(path, json.dumps(data, indent=1))
    entry = {key: value for key, value in data["metadata"].items() if key not in ("mechinterp", "info")}
    add_graph_metadata(folder, entry, replace=True)
    return path
