"""Circuit-discovery algorithms behind one signature, in one registry.

Every algorithm is ``(model, data, metric, graph, *, config) -> Circuit``: ``data`` holds
paired clean/corrupt tokens (``PairedData`` or ``mechinterp.data.PromptPairs``, with an
optional ``attention_mask``), ``metric`` is a positional metric (``mechinterp.metrics``), and
the result carries a score per edge (the estimated change of the mean metric when that edge
alone carries the corrupted source), the chosen edges and the settings used.

- ``"edge-patching"``: exact scores, one patched forward per edge, batched as rows
  (the reference the approximations are judged by; affordable on small models).
- ``"eap"``: edge attribution patching (Syed et al. 2023), one forward and backward pass.
- ``"eap-ig"``: EAP with integrated gradients over the input embeddings (Hanna et al. 2024).
- ``"relp"``: relevance patching (Rezaei Jafari et al. 2025): EAP with LRP relevance
  coefficients in place of gradients, same cost (``config.rules``; with the AH rule, query
  and key edges score 0).
- ``"acdc"``: ACDC (Conmy et al. 2023) with batched candidates: destinations are visited from
  the logits backwards; all incoming edges of one destination are tried as rows of one
  batched forward that starts at the destination's block (earlier blocks run once), and
  every edge whose removal changes the mean metric by less than ``config.threshold`` is
  removed. (The original tries them one at a time; trying one destination's candidates
  against the same circuit is what makes it one forward.)
- ``"acdc-exact"``: ACDC as Conmy et al. wrote it: the same reverse-topological pass, but one
  edge at a time, each tried against the circuit left by every earlier decision
  (``circuits.exact_acdc``); the result is the literal greedy loop's, batched speculatively.

Scoring algorithms keep ``config.top_n`` edges (``level="edge"``: the largest scores, or with
``selection="greedy"`` grown from the logits edge by edge) or the edges between the
``top_n`` highest-scoring nodes (``level="node"``, a node's score being the sum of its outgoing
edge scores: the estimated effect of patching the whole node), pruned to input-to-logits paths.
Every result's ``metadata`` holds the algorithm, its config and ``prompt``: the first clean
prompt, its answer and the answer's probability (``circuits.prompt.prompt_record``), which
graph viewers show.

Example:
    >>> graph = Graph.from_model(model)
    >>> circuit = ALGORITHMS["eap-ig"](model, pairs, pairs.metric(), graph, config=EAPIGConfig(top_n=200))
    >>> circuit = ALGORITHMS["acdc"](model, PairedData(clean, corrupt), metric, graph, config=ACDCConfig(threshold=0.05))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from circuits.circuit import Circuit
from circuits.eap import eap_ig_scores, eap_scores, relp_scores
from circuits.edge_patching import Ablation, patch_edges
from circuits.exact_acdc import exact_acdc_edges
from circuits.graph import Graph
from circuits.prompt import prompt_record
from mechinterp.dims import AttentionMask, Tokens
from mechinterp.metrics import PositionalMetric
from mechinterp.patching.relevance import DEFAULT_RULES

Level = Literal["edge", "node"]
Selection = Literal["top_n", "greedy"]


@dataclass(frozen=True)
class PairedData:
    """Clean and corrupt token batches ``[batch, pos]`` of equal shape (and their padding mask)."""

    clean: Tokens
    corrupt: Int[Tensor, "_batch _pos"]  # checked against clean below, with a clearer message
    attention_mask: AttentionMask | None = None

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupt.shape:
            raise ValueError(
                f"clean {tuple(self.clean.shape)} and corrupt {tuple(self.corrupt.shape)} tokens differ in shape"
            )


@dataclass(frozen=True, kw_only=True)
class SelectionConfig:
    """How many edges (or nodes, ``level="node"``) a scoring algorithm keeps, and how."""

    top_n: int = 100
    level: Level = "edge"
    selection: Selection = "top_n"


@dataclass(frozen=True, kw_only=True)
class EAPConfig(SelectionConfig):
    """EAP has no settings beyond the selection."""


@dataclass(frozen=True, kw_only=True)
class RelPConfig(SelectionConfig):
    """``rules``: the LRP rules (a subset of ``mechinterp.patching.relevance.RULES``; default
    the RelP authors' LN, identity and half rules)."""

    rules: tuple[str, ...] = DEFAULT_RULES


@dataclass(frozen=True, kw_only=True)
class EAPIGConfig(SelectionConfig):
    steps: int = 5


@dataclass(frozen=True, kw_only=True)
class EdgePatchingConfig(SelectionConfig):
    ablation: Ablation = "resample"
    rows_per_forward: int = 64


@dataclass(frozen=True, kw_only=True)
class ACDCConfig:
    threshold: float = 0.05
    ablation: Ablation = "resample"


@dataclass(frozen=True, kw_only=True)
class ACDCExactConfig(ACDCConfig):
    """``rows_per_forward``: speculative rows per forward (``circuits.exact_acdc``); it
    changes the speed only, never the result."""

    rows_per_forward: int = 16


def _select(graph: Graph, scores: Tensor, name: str, config: SelectionConfig, prompt: dict) -> Circuit:
    circuit = Circuit(graph, scores, metadata={"algorithm": name, "config": asdict(config), "prompt": prompt})
    if config.level == "node":
        return circuit.top_nodes(min(config.top_n, len(graph.source_nodes) - 1)).pruned()
    n = min(config.top_n, len(graph.edges))
    return (circuit.greedy(n) if config.selection == "greedy" else circuit.top_n(n)).pruned()


def _mask(data) -> Tensor | None:
    return getattr(data, "attention_mask", None)


def eap(model, data, metric: PositionalMetric, graph: Graph, *, config: EAPConfig = EAPConfig()) -> Circuit:
    scores = eap_scores(model, data.clean, data.corrupt, graph, metric, attention_mask=_mask(data))
    return _select(graph, scores / data.clean.shape[0], "eap", config, prompt_record(model, data, metric))


def relp(
    model, data, metric: PositionalMetric, graph: Graph, *, config: RelPConfig = RelPConfig()
) -> Circuit:
    scores = relp_scores(
        model, data.clean, data.corrupt, graph, metric, attention_mask=_mask(data), rules=config.rules
    )
    return _select(graph, scores / data.clean.shape[0], "relp", config, prompt_record(model, data, metric))


def eap_ig(
    model, data, metric: PositionalMetric, graph: Graph, *, config: EAPIGConfig = EAPIGConfig()
) -> Circuit:
    scores = eap_ig_scores(
        model, data.clean, data.corrupt, graph, metric, steps=config.steps, attention_mask=_mask(data)
    )
    return _select(graph, scores / data.clean.shape[0], "eap-ig", config, prompt_record(model, data, metric))


@torch.no_grad()
def edge_patching(
    model, data, metric: PositionalMetric, graph: Graph, *, config: EdgePatchingConfig = EdgePatchingConfig()
) -> Circuit:
    n_edges = len(graph.edges)
    run = dict(ablation=config.ablation, attention_mask=_mask(data))
    base = patch_edges(model, data.clean, data.corrupt, graph, torch.zeros(1, n_edges), metric, **run)
    scores = torch.empty(n_edges)
    for first in tqdm(range(0, n_edges, config.rows_per_forward), desc="edge patching", leave=False):
        edges = torch.arange(first, min(first + config.rows_per_forward, n_edges))
        masks = torch.zeros(len(edges), n_edges)
        masks[torch.arange(len(edges)), edges] = 1
        values = patch_edges(model, data.clean, data.corrupt, graph, masks, metric, **run)
        scores[edges] = (values.float().mean(-1) - base.float().mean()).cpu()
    return _select(graph, scores, "edge-patching", config, prompt_record(model, data, metric))


@torch.no_grad()
def acdc(
    model, data, metric: PositionalMetric, graph: Graph, *, config: ACDCConfig = ACDCConfig()
) -> Circuit:
    patched = torch.zeros(len(graph.edges))  # 1 = removed from the circuit (carries the ablated source)
    effects = torch.zeros(len(graph.edges))
    destinations: dict[tuple, list[int]] = {}
    for index, edge in enumerate(graph.edges):  # edges are grouped by destination in forward order
        destinations.setdefault((edge.target, edge.channel), []).append(index)
    for (target, _), candidates in tqdm(
        reversed(list(destinations.items())), total=len(destinations), desc="ACDC", leave=False
    ):
        masks = patched.repeat(len(candidates) + 1, 1)
        masks[torch.arange(1, len(candidates) + 1), candidates] = 1
        start = graph.n_layers - 1 if target.layer is None else target.layer
        values = patch_edges(
            model,
            data.clean,
            data.corrupt,
            graph,
            masks,
            metric,
            ablation=config.ablation,
            attention_mask=_mask(data),
            start_layer=start,
        )
        change = (values[1:].float().mean(-1) - values[0].float().mean()).abs().cpu()
        effects[candidates] = change
        patched[torch.tensor(candidates)[change < config.threshold]] = 1
    metadata = {"algorithm": "acdc", "config": asdict(config), "prompt": prompt_record(model, data, metric)}
    metadata["scores"] = "magnitude"  # |change|: rank by size only (circuits.mib)
    circuit = Circuit(graph, effects, patched == 0, metadata=metadata)
    return circuit.pruned()


@torch.no_grad()
def acdc_exact(
    model, data, metric: PositionalMetric, graph: Graph, *, config: ACDCExactConfig = ACDCExactConfig()
) -> Circuit:
    in_circuit, effects = exact_acdc_edges(
        model,
        data.clean,
        data.corrupt,
        graph,
        metric,
        threshold=config.threshold,
        ablation=config.ablation,
        attention_mask=_mask(data),
        rows_per_forward=config.rows_per_forward,
    )
    metadata = {
        "algorithm": "acdc-exact",
        "config": asdict(config),
        "prompt": prompt_record(model, data, metric),
        "scores": "magnitude",
    }
    return Circuit(graph, effects, in_circuit, metadata=metadata).pruned()


Algorithm = Callable[..., Circuit]
ALGORITHMS: dict[str, Algorithm] = {
    "edge-patching": edge_patching,
    "eap": eap,
    "eap-ig": eap_ig,
    "acdc": acdc,
    "relp": relp,
    "acdc-exact": acdc_exact,
}
CONFIGS: dict[str, type] = {
    "edge-patching": EdgePatchingConfig,
    "eap": EAPConfig,
    "eap-ig": EAPIGConfig,
    "acdc": ACDCConfig,
    "relp": RelPConfig,
    "acdc-exact": ACDCExactConfig,
}
