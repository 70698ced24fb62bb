"""Attribution graphs (work in progress): feature-level circuits through transcoders.

Ameisen et al. 2025 ("Circuit Tracing: Revealing Computational Graphs in Language Models") and
the ``circuit-tracer`` library: replace each MLP by transcoder features plus an exact error
term, freeze attention patterns and norm scales on one prompt, and read the direct effects
between features, errors, token embeddings and logits off batched backward passes.

Example:
    >>> from circuits.tracing import random_transcoders, trace, prune_graph
    >>> tc = random_transcoders(model, 64, kind="clt")
    >>> graph = trace(model, tc, "The cat sat on the")
    >>> pruned = prune_graph(graph)
"""

from circuits.tracing.graph import AttributionGraph
from circuits.tracing.replacement import ActiveFeatures, Replacement
from circuits.tracing.trace import trace
from circuits.tracing.transcoders import Transcoder, load_transcoders, random_transcoders

__all__ = [
    "ActiveFeatures",
    "AttributionGraph",
    "Replacement",
    "Transcoder",
    "load_transcoders",
    "random_transcoders",
    "trace",
]
