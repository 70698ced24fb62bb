"""Attribution graphs: feature-level circuits through transcoders.

Ameisen et al. 2025 ("Circuit Tracing: Revealing Computational Graphs in Language Models") and
the ``circuit-tracer`` library: replace each MLP by transcoder features plus an exact error
term, freeze attention patterns and norm scales on one prompt (``Replacement``), read the direct
effects between features, errors, token embeddings and logits off batched backward passes
(``trace``), split edges over the attention heads that carry them and a head's score over the
nodes that drive it (``head_split``, ``qk_split``), keep what carries the influence on the logits (``prune_graph``), check edges by
intervening on features (``intervene``) and export the graph for Neuronpedia's viewer
(``write_attribution_graph``) and circuit-tracer's local server (``write_graph_folder``).

Example:
    >>> from circuits.tracing import random_transcoders, trace, prune_graph, write_attribution_graph
    >>> tc = random_transcoders(model, 64, kind="clt")
    >>> graph = trace(model, tc, "The cat sat on the")
    >>> pruned = prune_graph(graph)
    >>> write_attribution_graph(pruned, "cat.json", slug="cat")
    >>> write_graph_folder(pruned, "graphs", slug="cat")   # circuit-tracer's local server
"""

from circuits.tracing.export import (
    kept_head_splits,
    to_attribution_dict,
    write_attribution_graph,
    write_graph_folder,
)
from circuits.tracing.graph import AttributionGraph
from circuits.tracing.heads import HeadSplit, QKSplit, head_split, head_splits, qk_split
from circuits.tracing.intervene import Intervention, intervene
from circuits.tracing.prune import PrunedGraph, graph_scores, prune_graph
from circuits.tracing.replacement import ActiveFeatures, Replacement
from circuits.tracing.trace import trace
from circuits.tracing.training import train_transcoders
from circuits.tracing.transcoders import Transcoder, load_transcoders, random_transcoders

__all__ = [
    "ActiveFeatures",
    "AttributionGraph",
    "HeadSplit",
    "Intervention",
    "PrunedGraph",
    "QKSplit",
    "Replacement",
    "Transcoder",
    "graph_scores",
    "head_split",
    "head_splits",
    "intervene",
    "kept_head_splits",
    "load_transcoders",
    "prune_graph",
    "qk_split",
    "random_transcoders",
    "to_attribution_dict",
    "trace",
    "train_transcoders",
    "write_attribution_graph",
    "write_graph_folder",
]
