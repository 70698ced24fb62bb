"""Circuit discovery on mechinterp models: the computational graph, batched edge patching,
discovery algorithms behind one signature (exact edge patching, EAP, EAP-IG, ACDC batched and
exact, RelP), position-aware circuits (edges per span of positions), faithfulness and ROC
evaluation, MIB's CPR / CMD over circuit sizes (``compare_methods``), and export (our JSON, EAP-IG
JSON, Neuronpedia / circuit-tracer graph JSON, GraphML, DOT; the interactive HTML page is a
figure, in ``mechinterp.plotting``).

Example:
    >>> from circuits import ALGORITHMS, Graph, faithfulness_curve, write
    >>> graph = Graph.from_model(model)
    >>> circuit = ALGORITHMS["eap"](model, pairs, pairs.metric(), graph)
    >>> faithfulness_curve(model, pairs.clean, pairs.corrupt, circuit, pairs.metric(), counts=range(0, 2000, 100)).area
    >>> write(circuit, "ioi.graphml", to="graphml")
"""

from circuits.algorithms import (
    ALGORITHMS,
    CONFIGS,
    ACDCConfig,
    ACDCExactConfig,
    EAPConfig,
    EAPIGConfig,
    EdgePatchingConfig,
    PairedData,
    RelPConfig,
    acdc,
    acdc_exact,
    eap,
    eap_ig,
    edge_patching,
    relp,
)
from circuits.circuit import Circuit
from circuits.eap import eap_ig_scores, eap_scores, node_scores, relp_scores
from circuits.edge_patching import patch_edges, reference_patch_edges
from circuits.evaluate import (
    CircuitScore,
    FaithfulnessCurve,
    RocCurve,
    evaluate_circuit,
    faithfulness_curve,
    roc_against,
    roc_curve,
)
from circuits.exact_acdc import exact_acdc_edges
from circuits.export import (
    WRITERS,
    read_json,
    to_dot,
    to_eap_ig_dict,
    write,
    write_dot,
    write_eap_ig_json,
    write_graph_folder,
    write_graphml,
    write_json,
    write_neuronpedia_json,
)
from circuits.graph import Edge, Graph, Node
from circuits.mib import (
    MIB_GRID,
    MethodComparison,
    MethodScore,
    MIBCurve,
    compare_methods,
    mib_areas,
    mib_curve,
)
from circuits.neuronpedia import to_neuronpedia_dict
from circuits.positional import (
    POSITIONAL_METHODS,
    PositionalCircuit,
    positional_faithfulness,
    positional_scores,
)
from circuits.prompt import prompt_record

__all__ = [
    "ALGORITHMS",
    "CONFIGS",
    "MIB_GRID",
    "POSITIONAL_METHODS",
    "WRITERS",
    "ACDCConfig",
    "ACDCExactConfig",
    "Circuit",
    "CircuitScore",
    "EAPConfig",
    "EAPIGConfig",
    "Edge",
    "EdgePatchingConfig",
    "FaithfulnessCurve",
    "Graph",
    "MIBCurve",
    "MethodComparison",
    "MethodScore",
    "Node",
    "PairedData",
    "PositionalCircuit",
    "RelPConfig",
    "RocCurve",
    "acdc",
    "acdc_exact",
    "compare_methods",
    "eap",
    "eap_ig",
    "eap_ig_scores",
    "eap_scores",
    "edge_patching",
    "evaluate_circuit",
    "exact_acdc_edges",
    "faithfulness_curve",
    "mib_areas",
    "mib_curve",
    "node_scores",
    "patch_edges",
    "positional_faithfulness",
    "positional_scores",
    "prompt_record",
    "read_json",
    "reference_patch_edges",
    "relp",
    "relp_scores",
    "roc_against",
    "roc_curve",
    "to_dot",
    "to_eap_ig_dict",
    "to_neuronpedia_dict",
    "write",
    "write_dot",
    "write_eap_ig_json",
    "write_graph_folder",
    "write_graphml",
    "write_json",
    "write_neuronpedia_json",
]
