"""The unpatched run that batched patched rows branch off (``BaseRun``).

Every exact executor (the activation-patching engine, the masked executor of path and edge
patching) runs rows that enter the model at some layer with the base run's residual stream
and compute positions from some start, reusing the base run's keys and values before it.
``BaseRun`` holds what they need and ``forward_rows`` runs them through the model's one
block runner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mechinterp.models.prefix import KeyValuePrefix


class BaseRun:
    """The unpatched run that patched rows branch off: its logits, the residual stream
    entering the requested layers, every layer's keys and values, and the activations at
    ``hook_names``. ``forward_rows`` runs rows that enter at given layers from it.

    With ``source_tokens`` the source run is computed in the same batched forward, and
    ``source_logits`` / ``source_cache`` (the activations at ``hook_names``) hold it.
    """

    def __init__(
        self,
        model,
        tokens: Tensor,
        attention_mask: Tensor,
        hook_names: set[str],
        layers: set[int],
        *,
        source_tokens: Tensor | None = None,
    ):
        self.model, self.tokens, self.mask = model, tokens, attention_mask
        n_layers = model.architecture.n_layers
        kv_filter = KeyValuePrefix.hook_filter(model)
        wanted = set(hook_names) | {self._entering_hook(layer) for layer in layers if layer > 0}
        batch = tokens.shape[0]
        inputs, mask = tokens, attention_mask
        if source_tokens is not None:
            inputs, mask = torch.cat([tokens, source_tokens]), attention_mask.repeat(2, 1)
        self.padding = None if bool(attention_mask.all()) else attention_mask  # None: one shared mask
        with torch.no_grad():
            logits, cache = model.run_with_cache(
                inputs,
                attention_mask=None if self.padding is None else mask,
                names_filter=lambda n: n in wanted or kv_filter(n),
            )
        self.logits = logits[:batch]
        self.cache = {name: value[:batch] for name, value in cache.items()}
        if source_tokens is not None:
            self.source_logits = logits[batch:]
            self.source_cache = {name: cache[name][batch:] for name in hook_names}
        self.kv = KeyValuePrefix.from_cache(self.cache, model, length=tokens.shape[1])
        self.n_layers = n_layers

    @classmethod
    def prefix(cls, model, tokens: Tensor, attention_mask: Tensor, length: int) -> BaseRun:
        """A base run of the first ``length`` positions only: the keys and values that rows
        computing positions ``length:`` need when they enter at layer 0 (or bring their own
        entering residual stream). It has no logits and no cache."""
        run = cls.__new__(cls)
        run.model, run.tokens, run.mask, run.cache = model, tokens, attention_mask, {}
        run.padding = None if bool(attention_mask.all()) else attention_mask
        run.n_layers, run.kv = model.architecture.n_layers, None
        if length > 0:
            with torch.no_grad():
                _, cache = model.run_with_cache(
                    tokens[:, :length],
                    attention_mask=None if run.padding is None else attention_mask[:, :length],
                    names_filter=KeyValuePrefix.hook_filter(model),
                    return_type=None,
                )
            run.kv = KeyValuePrefix.from_cache(cache, model, length=length)
        return run

    @staticmethod
    def _entering_hook(layer: int) -> str:
        """The hook holding what block ``layer`` (> 0) receives: the previous block's output.
        Not ``blocks.{layer}.hook_resid_pre``, which holds it after that hook point, so an SAE
        spliced there would be applied twice (its reconstruction encoded again)."""
        return f"blocks.{layer - 1}.hook_resid_post"

    def forward_rows(
        self,
        layers: Sequence[int],
        examples: Tensor,
        start: int,
        hooks: list,
        *,
        stop: int | None = None,
        entering: Mapping[int, Tensor] | None = None,
    ) -> Tensor:
        """The final residual stream ``[row, pos - start, d_model]`` of rows that enter at
        ``layers`` (sorted; ``n_layers`` = after the last block) with the base run's residual
        stream, computing positions ``start:`` only, with ``hooks`` active. ``stop``: return
        the residual stream entering that block instead; ``entering``: residual streams
        ``[batch, pos - start, d_model]`` that rows entering at a layer take instead of the
        base run's."""
        model = self.model
        examples = examples.to(self.tokens.device)
        mask = None if self.padding is None else self.padding[examples]
        context = model.attention_context(mask, n_pos=self.tokens.shape[1], offset=start)
        past = self.kv.truncate(start).select(examples) if start > 0 else None
        with model.hooks(fwd_hooks=hooks):  # hooks see the embedding of rows entering at 0 too
            rows: dict[int, Tensor] = {}
            first = 0
            for layer, count in run_lengths(layers):
                new = examples[first : first + count]
                if entering is not None and layer in entering:
                    rows[layer] = entering[layer][new]
                elif layer == 0:
                    rows[0] = model.embed_tokens(self.tokens[new, start:], context.rows(count).positions)
                else:
                    rows[layer] = self.cache[self._entering_hook(layer)][new, start:]
                first += count
            return model.run_blocks(None, context, start=layers[0], stop=stop, past=past, entering=rows)


def run_lengths(values: Sequence[int]) -> list[tuple[int, int]]:
    """``[(value, count)]`` of consecutive equal values."""
    runs: list[tuple[int, int]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1] = (value, runs[-1][1] + 1)
        else:
            runs.append((value, 1))
    return runs
