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
from circuits.evaluate import FaithfulnessCurve, RocCurve, faithfulness_curve, roc_against, roc_curve
from circuits.export import (
    WRITERS,
    read_json,
    to_dot,
    write,
    write_dot,
    write_eap_ig_json,
    write_graphml,
    write_html,
    write_json,
    write_neuronpedia_json,
)
from circuits.graph import Edge, Graph, Node

__all__ = [
    "ALGORITHMS",
    "WRITERS",
    "ACDCConfig",
    "Circuit",
    "EAPConfig",
    "Edge",
    "FaithfulnessCurve",
    "Graph",
    "Node",
    "PairedData",
    "RocCurve",
    "acdc",
    "eap",
    "eap_ig_scores",
    "eap_scores",
    "faithfulness_curve",
    "node_scores",
    "patch_edges",
    "read_json",
    "reference_patch_edges",
    "roc_against",
    "roc_curve",
    "to_dot",
    "write",
    "write_dot",
    "write_eap_ig_json",
    "write_graphml",
    "write_html",
    "write_json",
    "write_neuronpedia_json",
]
