"""Batched rows with one activation replaced: the engine under every gradient and
perturbation method.

A *site* is a hook point whose activation has a position axis second (``hook_embed``, the
residual stream, head outputs ``hook_z`` / ``hook_result``, ...). A row is one example whose
site activation over the prompt positions is replaced by a given tensor (an interpolation
point, an occluded copy, ...); a continuation's positions keep the values the run computes.
``SiteRunner.scores`` runs many rows as one forward (``[row * variant, seq]``) and returns
the objective per row, differentiable with respect to the injected tensor.

Rows are chunked to a memory budget; a chunk that runs out of memory is halved and retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechinterp.patching.memory import is_out_of_memory, memory_budget
from mechinterp.token_attribution.objective import Objective

PATTERN_HOOKS = ("attn.hook_pattern", "attn.hook_attn_scores")


@contextmanager
def frozen_parameters(model) -> Iterator[None]:
    """Parameters do not require grad in the body (gradients are only taken with respect to
    activations, and no weight-gradient buffers are kept); restored afterwards."""
    previous = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in previous:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in previous:
            parameter.requires_grad_(flag)


def site_context(model, site: str):
    """The model setting a site needs: per-head outputs or per-head inputs switched on."""
    return model.per_head_hooks(
        results=site.endswith("attn.hook_result"),
        split_inputs=site.endswith(("hook_q_input", "hook_k_input", "hook_v_input")),
    )


def _stop_layer(model, site: str) -> int | None:
    """The first block a capture of ``site`` does not need (``None``: run to the end)."""
    if site in ("hook_embed", "hook_pos_embed"):
        return 0
    for layer in range(model.architecture.n_layers):
        if site.startswith(f"blocks.{layer}."):
            return layer + 1
    return None


class SiteRunner:
    """Runs rows of ``tokens`` (``[batch, pos]``, mask ``[batch, pos]``) with the activation at
    ``site`` over the prompt positions replaced, scored by ``objective``."""

    def __init__(
        self,
        model,
        tokens: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        objective: Objective,
        site: str,
    ):
        model.check_hook_name(site)
        if site.endswith(PATTERN_HOOKS):
            raise ValueError(
                f"cannot attribute to {site!r}: attention scores and patterns are [batch, head, q_pos, "
                "k_pos], not per position; use blocks.{l}.attn.hook_z or hook_result for per-head attributions"
            )
        self.model, self.site, self.objective = model, site, objective
        self.tokens, self.mask = tokens, mask
        self.sequences, self.sequence_mask = objective.sequences(tokens, mask)
        self.n_prompt = tokens.shape[1]

    def capture(self, tokens: Int[Tensor, "batch pos"]) -> Tensor:
        """The site's activation ``[batch, pos, ...]`` when the prompt positions hold ``tokens``."""
        captured = []

        def keep(activation: Tensor, hook) -> None:
            captured.append(activation.detach())

        stop = _stop_layer(self.model, self.site)
        with (
            torch.no_grad(),
            site_context(self.model, self.site),
            self.model.hooks(fwd_hooks=[(self.site, keep)]),
        ):
            self.model(tokens, attention_mask=self.mask, stop_at_layer=stop, return_type=None)
        activation = captured[0]
        if activation.ndim not in (3, 4) or activation.shape[:2] != tokens.shape:
            raise ValueError(
                f"cannot attribute to {self.site!r}: its activation is {tuple(activation.shape)}, "
                f"expected [batch, pos, ...] with batch, pos = {tuple(tokens.shape)}"
            )
        return activation

    def scores(self, examples: Int[Tensor, " row"], injected: Float[Tensor, "row pos ..."]) -> Tensor:
        """The objective ``[row]`` of rows of ``examples`` whose site activation over the prompt
        positions is ``injected`` (gradients flow back to ``injected``)."""
        variants = self.objective.variants
        index = examples.to(self.sequences.device)
        sequences = self.sequences[:, index].flatten(0, 1)
        mask = self.sequence_mask[:, index].flatten(0, 1)
        replacement = injected if variants == 1 else injected.repeat(variants, *[1] * (injected.ndim - 1))
        n_prompt = self.n_prompt

        def inject(activation: Tensor, hook) -> Tensor:
            if activation.shape[0] != replacement.shape[0] or activation.shape[2:] != replacement.shape[2:]:
                raise ValueError(
                    f"{self.site}: injected {tuple(replacement.shape)} does not fit the activation "
                    f"{tuple(activation.shape)}"
                )
            value = replacement.to(activation.dtype)
            if activation.shape[1] == n_prompt:
                return value
            return torch.cat([value, activation[:, n_prompt:]], dim=1)

        n_layers = self.model.architecture.n_layers
        with site_context(self.model, self.site), self.model.hooks(fwd_hooks=[(self.site, inject)]):
            residual = self.model(sequences, attention_mask=mask, stop_at_layer=n_layers)
        return self.objective.score(self.model, residual, examples)

    def bytes_per_row(self, *, backward: bool) -> int:
        """A generous estimate of one row's peak memory (all layers' saved activations when
        a backward pass follows)."""
        arch = self.model.architecture
        seq = self.sequences.shape[-1]
        per_position = 12 * arch.d_model + 4 * arch.d_mlp + 3 * arch.n_heads * seq
        layers = arch.n_layers if backward else 1
        elements = self.objective.variants * (seq * per_position * layers + 3 * seq * arch.d_vocab)
        return elements * torch.finfo(self.model.dtype).bits // 8

    def rows_per_chunk(self, max_batch_rows: int | str, max_memory: int | None, *, backward: bool) -> int:
        if max_batch_rows != "auto":
            if isinstance(max_batch_rows, bool) or not isinstance(max_batch_rows, int) or max_batch_rows < 1:
                raise ValueError(f"max_batch_rows must be an integer >= 1 or 'auto', got {max_batch_rows!r}")
            return max_batch_rows
        budget = memory_budget(self.model.device, max_memory)
        return max(1, budget // self.bytes_per_row(backward=backward))


def over_chunks(n_rows: int, chunk: int, work: Callable[[int, int], None], device: torch.device) -> int:
    """Call ``work(start, end)`` on consecutive row ranges of at most ``chunk`` rows, halving
    the chunk after an out-of-memory error (``work`` must change nothing before it succeeds).
    Returns the number of chunks run."""
    done, chunks = 0, 0
    while done < n_rows:
        end = min(n_rows, done + chunk)
        try:
            work(done, end)
        except Exception as error:  # halve on out-of-memory, re-raise anything else
            if not is_out_of_memory(error) or chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        done, chunks = end, chunks + 1
    return chunks
