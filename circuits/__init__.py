"""Circuit discovery on mechinterp models: the computational graph, batched edge patching and
EAP edge scores.

ACDC, EAP-IG, faithfulness evaluation and export are not implemented yet; see the README's
"not done yet" section.

Example:
    >>> from circuits import Graph, patch_edges
    >>> graph = Graph.from_model(model)
"""

from circuits.algorithms import ALGORITHMS, ACDCConfig, EAPConfig, PairedData, acdc, eap
from circuits.circuit import Circuit
from circuits.eap import eap_ig_scores, eap_scores, node_scores
from circuits.edge_patching import patch_edges, reference_patch_edges
from circuits.evaluate import FaithfulnessCurve, faithfulness_curve
from circuits.export import read_json, to_dot, write_dot, write_eap_ig_json, write_json
from circuits.graph import Edge, Graph, Node

__all__ = [
    "ALGORITHMS",
    "ACDCConfig",
    "Circuit",
    "EAPConfig",
    "Edge",
    "FaithfulnessCurve",
    "Graph",
    "Node",
    "PairedData",
    "acdc",
    "eap",
    "eap_ig_scores",
    "eap_scores",
    "faithfulness_curve",
    "node_scores",
    "patch_edges",
    "read_json",
    "reference_patch_edges",
    "to_dot",
    "write_dot",
    "write_eap_ig_json",
    "write_json",
]
