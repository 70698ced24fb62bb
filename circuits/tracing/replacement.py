"""The local replacement model of one prompt (Ameisen et al. 2025, "Circuit Tracing", §2).

On one prompt, the model is rewritten so that everything between feature activations is
linear:

- each MLP output ``blocks.{l}.hook_mlp_out`` becomes the transcoders' reconstruction plus an
  **error node** per position, ``error = mlp_out - reconstruction`` on this prompt, held fixed;
- attention patterns (``blocks.{l}.attn.hook_pattern``) and every normalisation divisor (each
  ``hook_scale``: ``ln1``, ``ln2``, post-sublayer norms, QK-norms, ``ln_final``) are frozen at
  their values on the prompt.

Nothing is re-derived: the model's own forward runs with hooks that hand back the frozen values
(``frozen_hooks``). With the error nodes the replacement reproduces the model's logits, and
from feature activations, errors and the residual stream entering block 0 (the embedding) it is
affine: to every feature's pre-activation and to every (uncapped) logit. That is what makes the
direct effects of ``trace`` exact and additive.

Example:
    >>> rep = Replacement(model, transcoders, tokens)      # tokens: [1, pos]
    >>> torch.allclose(rep.logits(), model(tokens))        # exact, through the replacement
    True
    >>> rep.active.layer, rep.active.pos, rep.active.index, rep.active.value
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.tracing.transcoders import Transcoder

FeatureKey = tuple[int, int, int]
"""A feature node: ``(layer, position, feature index)``."""


@dataclass(frozen=True, eq=False)
class ActiveFeatures:
    """The features that fire on the prompt, ordered by (layer, position, index): ``[n]``
    tensors on the model's device."""

    layer: Int[Tensor, " feature"]
    pos: Int[Tensor, " feature"]
    index: Int[Tensor, " feature"]
    value: Float[Tensor, " feature"]

    def __len__(self) -> int:
        return self.layer.shape[0]

    def lookup(self, keys: Sequence[FeatureKey]) -> list[int]:
        """Row of each ``(layer, pos, index)``; ``KeyError`` for a feature that does not fire."""
        columns = (self.layer.tolist(), self.pos.tolist(), self.index.tolist())
        rows = {key: i for i, key in enumerate(zip(*columns, strict=True))}
        missing = [key for key in keys if tuple(key) not in rows]
        if missing:
            raise KeyError(f"features {missing} do not fire on this prompt (active: {len(rows)} features)")
        return [rows[tuple(key)] for key in keys]


class Replacement:
    """The local replacement model of ``model`` with ``transcoders`` on one prompt ``tokens``
    ``[1, pos]`` (see the module docstring). Computing it costs one forward pass.

    Attributes: ``frozen`` (hook name -> frozen pattern or scale, batch 1), ``embedding``
    ``[pos, d_model]`` (the residual stream entering block 0), ``mlp_out`` and ``errors``
    (per layer ``[pos, d_model]``), ``active`` (``ActiveFeatures``), ``clean_logits`` ``[pos, vocab]``.
    """

    def __init__(self, model: Any, transcoders: Transcoder, tokens: Int[Tensor, "1 pos"]):
        transcoders.check_model(model)
        if tokens.ndim != 2 or tokens.shape[0] != 1:
            raise ValueError(
                f"the replacement model is built for one prompt: tokens [1, pos], got {tuple(tokens.shape)}"
            )
        self.model, self.transcoders = model, transcoders
        self.tokens = tokens.to(model.device)
        n_layers = model.architecture.n_layers
        names = [
            name
            for name in model.hook_dict
            if name.endswith((".hook_pattern", "hook_scale")) and "hook_sae" not in name
        ]
        mlp = [f"blocks.{layer}.hook_mlp_{which}" for layer in range(n_layers) for which in ("in", "out")]
        with torch.no_grad():
            logits, cache = model.run_with_cache(
                self.tokens, names_filter=[*names, *mlp, "blocks.0.hook_resid_pre"]
            )
        self.clean_logits: Float[Tensor, "pos d_vocab"] = logits[0]
        self.frozen: dict[str, Tensor] = {name: cache[name] for name in names if name in cache}
        self.embedding: Float[Tensor, "pos d_model"] = cache["blocks.0.hook_resid_pre"][0]
        self.mlp_out = [cache[f"blocks.{layer}.hook_mlp_out"][0] for layer in range(n_layers)]
        mlp_in = [cache[f"blocks.{layer}.hook_mlp_in"][0] for layer in range(n_layers)]
        layers, positions, indices, values, acts = [], [], [], [], []
        with torch.no_grad():
            for layer in range(n_layers):
                x = transcoders.transcoder_input(model, layer, mlp_in[layer]).to(transcoders.device)
                a = transcoders.encode(layer, x)
                acts.append(a)
                pos, index = a.nonzero(as_tuple=True)  # row-major: ordered by position, then index
                layers.append(torch.full_like(pos, layer))
                positions.append(pos)
                indices.append(index)
                values.append(a[pos, index])
            reconstructions = [
                transcoders.decode(layer, acts).to(self.mlp_out[layer].device, model.dtype)
                for layer in range(n_layers)
            ]
        self.active = ActiveFeatures(*(torch.cat(t) for t in (layers, positions, indices, values)))
        self.errors = [out - recon for out, recon in zip(self.mlp_out, reconstructions, strict=True)]

    @property
    def n_pos(self) -> int:
        return self.tokens.shape[1]

    # ------------------------------------------------------------------ running it
    @contextmanager
    def frozen_hooks(
        self,
        mlp_out: Sequence[Float[Tensor, "batch pos d_model"]],
        *,
        embedding: Float[Tensor, "batch pos d_model"] | None = None,
        record_inputs: list[Float[Tensor, "batch pos d_in"]] | None = None,
    ) -> Iterator[None]:
        """Hooks for the body of a ``with`` block that make the model's forward the frozen
        replacement: patterns and scales from ``frozen``, MLP outputs ``mlp_out[l]``
        (``[batch, pos, d_model]``), and (if given) the residual stream entering block 0.
        ``record_inputs`` (a list) receives each layer's live encoder input
        ``[batch, pos, d_in]`` in layer order."""
        hooks: list[tuple[str, Callable]] = [
            (name, _constant(value, name)) for name, value in self.frozen.items()
        ]
        for layer, value in enumerate(mlp_out):
            hooks.append((f"blocks.{layer}.hook_mlp_out", _constant(value, f"blocks.{layer}.hook_mlp_out")))
        if embedding is not None:
            hooks.append(("blocks.0.hook_resid_pre", _constant(embedding, "blocks.0.hook_resid_pre")))
        if record_inputs is not None:
            for layer in range(self.model.architecture.n_layers):
                hooks.append((f"blocks.{layer}.hook_mlp_in", self._recorder(layer, record_inputs)))
        with self.model.hooks(fwd_hooks=hooks):
            yield

    def _recorder(self, layer: int, store: list[Tensor]) -> Callable:
        def hook(x: Tensor, hook: Any) -> None:
            store.append(self.transcoders.transcoder_input(self.model, layer, x))

        return hook

    def run(
        self,
        mlp_out: Sequence[Float[Tensor, "batch pos d_model"]],
        *,
        embedding: Float[Tensor, "batch pos d_model"] | None = None,
        batch: int = 1,
    ) -> tuple[list[Float[Tensor, "batch pos d_in"]], Float[Tensor, "batch pos d_model"]]:
        """One forward of the frozen replacement on ``batch`` copies of the prompt: returns the
        encoder inputs of every layer and the final residual stream after ``ln_final`` (frozen).
        Gradients flow from the outputs to ``mlp_out`` and ``embedding``."""
        inputs: list[Tensor] = []
        tokens = self.tokens.expand(batch, -1)
        with self.frozen_hooks(mlp_out, embedding=embedding, record_inputs=inputs):
            final = self.model(tokens, stop_at_layer=self.model.architecture.n_layers)
            normed = self.model.ln_final(final)
        return inputs, normed

    def mlp_outputs(
        self, values: Float[Tensor, " feature"] | None = None, *, errors: bool = True
    ) -> list[Float[Tensor, "pos d_model"]]:
        """Each layer's MLP output in the replacement: the decoders applied to the active
        features (their prompt activations, or ``values`` in ``active``'s order), plus the
        decoder bias, plus the error node (unless ``errors=False``)."""
        tc, active = self.transcoders, self.active
        values = active.value if values is None else values
        outputs = []
        for layer in range(self.model.architecture.n_layers):
            out = tc.b_dec[layer].expand(self.n_pos, -1).clone()
            for source in range(layer + 1):
                if layer not in tc.output_layers(source):
                    continue
                rows = active.layer == source
                vectors = tc.W_dec[source][active.index[rows], layer - source]  # [n, d_model]
                out = out.index_add(0, active.pos[rows], values[rows].to(tc.dtype)[:, None] * vectors)
            out = out.to(self.model.dtype)
            outputs.append(out + self.errors[layer].to(out.device) if errors else out)
        return outputs

    def logits(self, values: Float[Tensor, " feature"] | None = None) -> Float[Tensor, "pos d_vocab"]:
        """The replacement's logits (soft-capped like the model's), with the active features at
        their prompt values or at ``values``; every other feature and every error stays fixed."""
        with torch.no_grad():
            _, normed = self.run([out[None] for out in self.mlp_outputs(values)])
            return self.model.unembed(normed)[0]


def _constant(value: Tensor, name: str) -> Callable:
    """A hook replacing an activation by ``value`` (batch 1 broadcast over the batch, or the batch itself)."""

    def hook(x: Tensor, hook: Any) -> Tensor:
        if value.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{name}: the frozen value {tuple(value.shape)} does not fit the activation {tuple(x.shape)}; "
                "the replacement model runs only on its own prompt"
            )
        here = value.to(x.device)  # a model placed across devices (device_map)
        return here.expand(x.shape) if here.shape[0] == 1 else here

    return hook


def apply_values(active: ActiveFeatures, changes: Mapping[FeatureKey, float]) -> Float[Tensor, " feature"]:
    """The active features' values with ``changes`` (``(layer, pos, index) -> new value``) applied."""
    values = active.value.clone()
    rows = active.lookup(list(changes))
    values[rows] = torch.tensor(list(changes.values()), dtype=values.dtype, device=values.device)
    return values
