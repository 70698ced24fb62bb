"""``AttributionGraph``: the direct effects between the nodes of one prompt's replacement model.

Nodes, in circuit-tracer's order (node ids are indices into it):

1. active features ``(layer, pos, index)``, ordered by layer, position, index;
2. error nodes, one per ``(layer, pos)``: index ``n_features + layer * n_pos + pos``;
3. token-embedding nodes, one per position (the residual stream entering block 0);
4. logit nodes: the most likely next tokens at the last position.

``edges`` is a sparse ``[n_nodes, n_nodes]`` COO matrix ``A[target, source]``: the direct effect
of the source on the target through the frozen replacement (``circuits.tracing.replacement``),
with every other node held fixed. A feature's target value is its pre-activation; a logit's is
its uncapped logit minus the mean uncapped logit (as circuit-tracer). Linearity makes

    value(target) = bias(target) + sum over sources A[target, source]

exact, and scaling a source node by ``c`` moves each target by ``(c - 1) * A[target, source]``.

Example:
    >>> graph = trace(model, transcoders, "The capital of France is")
    >>> graph.n_nodes, graph.edges._nnz()
    >>> graph.node_label(graph.logit_node(0))
    'logit " Paris" (p=0.412)'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuits.tracing.replacement import FeatureKey


@dataclass(frozen=True, eq=False)
class AttributionGraph:
    """An attribution graph over one prompt (see the module docstring); tensors on the CPU.

    Attributes:
        tokens: the prompt's token ids ``[pos]``; ``token_strings`` their text.
        features: ``[n_features, 3]`` rows ``(layer, pos, index)``; ``activations`` their values.
        traced: ``[n_features]`` whether each feature's incoming edges were computed (all of
            them, unless ``trace`` ran with ``max_feature_nodes``); logit nodes are always traced.
        logit_tokens / logit_probabilities: ``[n_logits]`` the logit nodes' tokens and their
            probabilities under the model.
        edges: sparse COO ``[n_nodes, n_nodes]``, ``A[target, source]`` (coalesced).
        values: ``[n_nodes]`` each node's value on the prompt: pre-activation (features),
            error norm (errors), 0 (tokens), centred uncapped logit (logits).
        widths: features per layer of the transcoders; ``model_name``, ``transcoder_kind``.
    """

    tokens: Int[Tensor, " pos"]
    token_strings: tuple[str, ...]
    n_layers: int
    features: Int[Tensor, "feature 3"]
    activations: Float[Tensor, " feature"]
    traced: Bool[Tensor, " feature"]
    logit_tokens: Int[Tensor, " logit"]
    logit_probabilities: Float[Tensor, " logit"]
    edges: Float[Tensor, "node node"]  # sparse COO
    values: Float[Tensor, " node"]
    widths: tuple[int, ...]
    model_name: str
    transcoder_kind: str
    info: dict[str, Any]

    # ------------------------------------------------------------------ node indexing
    @property
    def n_pos(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[0]

    @property
    def n_logits(self) -> int:
        return self.logit_tokens.shape[0]

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_layers * self.n_pos + self.n_pos + self.n_logits

    def error_node(self, layer: int, pos: int) -> int:
        return self.n_features + layer * self.n_pos + pos

    def token_node(self, pos: int) -> int:
        return self.n_features + self.n_layers * self.n_pos + pos

    def logit_node(self, k: int) -> int:
        return self.n_features + (self.n_layers + 1) * self.n_pos + k

    def feature_node(self, layer: int, pos: int, index: int) -> int:
        """The node of feature ``(layer, pos, index)``; ``KeyError`` if it is not active."""
        hit = ((self.features == torch.tensor([layer, pos, index])).all(1)).nonzero()
        if not len(hit):
            raise KeyError(f"feature {(layer, pos, index)} is not active on this prompt")
        return int(hit[0, 0])

    def kind(self, node: int) -> str:
        """``"feature"``, ``"error"``, ``"token"`` or ``"logit"``."""
        if not 0 <= node < self.n_nodes:
            raise IndexError(f"node {node} out of range (the graph has {self.n_nodes} nodes)")
        bounds = [self.n_features, self.token_node(0), self.logit_node(0)]
        return ("feature", "error", "token", "logit")[sum(node >= b for b in bounds)]

    def node_label(self, node: int) -> str:
        """A readable name: ``f3@5#117`` (feature 117 of layer 3 at position 5), ``err3@5``,
        ``tok@5 "cat"``, ``logit " Paris" (p=0.412)``."""
        kind = self.kind(node)
        if kind == "feature":
            layer, pos, index = self.features[node].tolist()
            return f"f{layer}@{pos}#{index}"
        if kind == "error":
            layer, pos = divmod(node - self.n_features, self.n_pos)
            return f"err{layer}@{pos}"
        if kind == "token":
            pos = node - self.token_node(0)
            return f'tok@{pos} "{self.token_strings[pos]}"'
        k = node - self.logit_node(0)
        return f'logit "{self.logit_strings[k]}" (p={float(self.logit_probabilities[k]):.3f})'

    @property
    def logit_strings(self) -> tuple[str, ...]:
        return tuple(self.info.get("logit_strings", [str(int(t)) for t in self.logit_tokens]))

    # ------------------------------------------------------------------ reading edges
    def incoming(self, node: int) -> tuple[Int[Tensor, " edge"], Float[Tensor, " edge"]]:
        """``(sources, weights)`` of the edges into ``node``."""
        indices, values = self.edges.indices(), self.edges.values()
        rows = indices[0] == node
        return indices[1, rows], values[rows]

    def edge_weights(
        self, targets: Int[Tensor, " edge"], sources: Int[Tensor, " edge"]
    ) -> Float[Tensor, " edge"]:
        """``A[target, source]`` for each pair (zero where there is no edge), by binary search in
        the coalesced (row-major sorted) indices."""
        rows, cols = self.edges.indices()
        keys = rows * self.n_nodes + cols
        wanted = targets.long() * self.n_nodes + sources.long()
        at = torch.searchsorted(keys, wanted).clamp(max=max(keys.shape[0] - 1, 0))
        if not keys.shape[0]:
            return torch.zeros(wanted.shape, dtype=self.edges.dtype)
        return torch.where(keys[at] == wanted, self.edges.values()[at], 0.0)

    def dense(self) -> Float[Tensor, "node node"]:
        """The adjacency as a dense matrix (small graphs only)."""
        return self.edges.to_dense()

    def predicted_change(self, changes: Mapping[FeatureKey, float]) -> Float[Tensor, " node"]:
        """How each node's value moves, to first and only order in the frozen replacement, when
        the features in ``changes`` (``(layer, pos, index) -> new activation``) take new values
        and every other node stays fixed: ``sum_s (new_s / a_s - 1) * A[:, s]``.

        Example:
            >>> graph.predicted_change({(1, 4, 17): 0.0})[graph.logit_node(0)]   # zero-ablation
        """
        scale = torch.zeros(self.n_nodes, dtype=self.edges.dtype)
        for (layer, pos, index), value in changes.items():
            node = self.feature_node(layer, pos, index)
            scale[node] = value / float(self.activations[node]) - 1.0
        return torch.sparse.mm(self.edges, scale[:, None])[:, 0]

    def __repr__(self) -> str:
        return (
            f"AttributionGraph({self.model_name}, {self.n_pos} tokens: {self.n_features} features, "
            f"{self.n_layers * self.n_pos} errors, {self.n_logits} logits, {self.edges._nnz()} edges)"
        )
