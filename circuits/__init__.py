"""Circuit discovery on mechinterp models: the computational graph, batched edge patching and
EAP edge scores.

ACDC, EAP-IG, faithfulness evaluation and export are not implemented yet; see the README's
"not done yet" section.

Example:
    >>> from circuits import Graph, patch_edges
    >>> graph = Graph.from_model(model)
"""

from circuits.eap import eap_scores, node_scores
from circuits.edge_patching import patch_edges, reference_patch_edges
from circuits.graph import Edge, Graph, Node

__all__ = ["Edge", "Graph", "Node", "eap_scores", "node_scores", "patch_edges", "reference_patch_edges"]
