"""Circuit-discovery algorithms behind one signature, in one registry.

Every algorithm is ``(model, data, metric, graph, *, config) -> Circuit``: ``data`` holds
paired clean/corrupt tokens, ``metric`` is a positional metric (``mechinterp.metrics``), and
the result carries a score per edge, the chosen edges and the settings used.

- ``"eap"``: edge attribution patching scores (Syed et al. 2023); the circuit is the top
  ``config.top_n`` edges by magnitude, pruned to input-to-logits paths.
- ``"acdc"``: ACDC (Conmy et al. 2023) with batched candidates: destinations are visited from
  the logits backwards; all incoming edges of one destination are tried as rows of one
  batched forward against the current circuit, and every edge whose removal changes the
  mean metric by less than ``config.threshold`` is removed. (The original tries them one at
  a time; evaluating a destination's candidates together is what makes it one forward.)

Example:
    >>> circuit = ALGORITHMS["acdc"](model, PairedData(clean, corrupt), metric, graph, config=ACDCConfig(0.05))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from circuits.circuit import Circuit
from circuits.eap import eap_scores
from circuits.edge_patching import patch_edges
from circuits.graph import Graph
from mechinterp.metrics import PositionalMetric


@dataclass(frozen=True)
class PairedData:
    """Clean and corrupt token batches ``[batch, pos]`` of equal shape."""

    clean: Tensor
    corrupt: Tensor

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupt.shape:
            raise ValueError(
                f"clean {tuple(self.clean.shape)} and corrupt {tuple(self.corrupt.shape)} tokens differ in shape"
            )


@dataclass(frozen=True, kw_only=True)
class EAPConfig:
    top_n: int = 100


@dataclass(frozen=True, kw_only=True)
class ACDCConfig:
    threshold: float = 0.05


def eap(
    model, data: PairedData, metric: PositionalMetric, graph: Graph, *, config: EAPConfig = EAPConfig()
) -> Circuit:
    scores = eap_scores(model, data.clean, data.corrupt, graph, metric) / data.clean.shape[0]
    circuit = Circuit(graph, scores, metadata={"algorithm": "eap", "config": asdict(config)})
    return circuit.top_n(min(config.top_n, len(graph.edges))).pruned()


@torch.no_grad()
def acdc(
    model, data: PairedData, metric: PositionalMetric, graph: Graph, *, config: ACDCConfig = ACDCConfig()
) -> Circuit:
    patched = torch.zeros(len(graph.edges))  # 1 = removed from the circuit (carries the corrupted source)
    effects = torch.zeros(len(graph.edges))
    destinations = []
    for edge in graph.edges:  # edges are grouped by destination in topological order
        key = (edge.target, edge.channel)
        if key not in destinations:
            destinations.append(key)
    for target, channel in reversed(destinations):
        candidates = graph.edges_into(target, channel)
        masks = patched.repeat(len(candidates) + 1, 1)
        for row, index in enumerate(candidates):
            masks[row + 1, index] = 1
        values = patch_edges(model, data.clean, data.corrupt, graph, masks, metric).float().mean(-1)
        change = (values[1:] - values[0]).abs()
        effects[candidates] = change
        patched[torch.tensor(candidates)[change < config.threshold]] = 1
    circuit = Circuit(graph, effects, patched == 0, metadata={"algorithm": "acdc", "config": asdict(config)})
    return circuit.pruned()


Algorithm = Callable[..., Circuit]
ALGORITHMS: dict[str, Algorithm] = {"eap": eap, "acdc": acdc}
