"""Activation sources for SAE training: a model's activations at a hook over a text corpus.

``ActivationStream`` tokenises texts in batches, runs the model only up to the block that
holds the hook (``stop_at_layer``), drops padding and beginning-of-sequence tokens, and
tokens whose activation norm exceeds ``outlier_ratio`` times the batch's median (attention
sinks: in SmolLM2's middle layers a few tokens besides BOS have norms 50x the median, and
one such token outweighs thousands of ordinary ones in the reconstruction loss), and serves
training batches from a shuffling buffer so that a batch mixes tokens of many texts.
Texts are cycled (epochs) for as long as batches are asked for.

Example:
    >>> stream = ActivationStream(model, load_corpus("default", "train"), "blocks.15.hook_resid_post")
    >>> batch = next(iter(stream.batches(4096)))         # [4096, 576]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


def stop_layer(model, hook_name: str) -> int | None:
    """The first block the forward need not run to compute ``hook_name`` (``None``: the hook
    is after the last block, so the whole model runs)."""
    model.check_hook_name(hook_name)
    point = model.hook_dict[hook_name]
    if point is getattr(model, "hook_embed", None) or point is getattr(model, "hook_pos_embed", None):
        return 0
    for index, block in enumerate(model.blocks):
        if any(module is point for module in block.modules()):
            return index + 1
    return None


def typical_tokens(x: Tensor, ratio: float) -> Tensor:
    """Mask of the rows of ``x`` whose norm is at most ``ratio`` times the median norm."""
    norms = x.float().norm(dim=-1)
    return norms <= ratio * norms.median()


def content_tokens(model, tokens: Tensor, mask: Tensor) -> Tensor:
    """The positions that hold text: not padding (``mask``), not the beginning-of-sequence token."""
    keep = mask.bool()
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    return keep if bos is None else keep & (tokens != bos)


def shuffled_batches(
    rows: Iterator[Tensor], batch_size: int, buffer_tokens: int, *, seed: int
) -> Iterator[Tensor]:
    """Batches of ``batch_size`` rows drawn from ``rows`` (an endless iterator of ``[n, ...]``
    blocks) through a shuffling buffer of ``buffer_tokens`` rows: fill it, shuffle, serve the
    first half, keep the second half for the next fill. Memory stays at one buffer."""
    if batch_size > buffer_tokens // 2:
        raise ValueError(f"batch_size {batch_size} exceeds half the buffer ({buffer_tokens} tokens)")
    generator = torch.Generator().manual_seed(seed)
    buffer: Tensor | None = None
    while True:
        while buffer is None or buffer.shape[0] < buffer_tokens:
            new = next(rows)
            buffer = new if buffer is None else torch.cat([buffer, new])
        buffer = buffer[torch.randperm(buffer.shape[0], generator=generator).to(buffer.device)]
        half = buffer_tokens // 2
        for start in range(0, half - batch_size + 1, batch_size):
            yield buffer[start : start + batch_size]
        buffer = buffer[half:]


@dataclass(eq=False)
class ActivationStream:
    """Activations of ``model`` at ``hook_name`` (and ``hook_name_out`` for transcoders) on ``texts``.

    Attributes:
        context: tokens per text (longer texts are cut).
        texts_per_forward: texts per model forward.
        buffer_tokens: size of the shuffling buffer (rows).
        outlier_ratio: drop tokens whose input norm exceeds this multiple of the median
            (``None`` keeps every token).
        seed: shuffling seed.
        model_b: a second model with the same tokenizer (crosscoders): each row is the two
            models' activations at ``hook_name`` on the same token, concatenated
            ``[model's, model_b's]`` (width ``2 * d_model``).
    """

    model: object
    texts: Sequence[str]
    hook_name: str
    hook_name_out: str | None = None
    context: int = 128
    texts_per_forward: int = 16
    buffer_tokens: int = 65536
    outlier_ratio: float | None = 10.0
    seed: int = 0
    model_b: object | None = None

    def __post_init__(self) -> None:
        if not self.texts:
            raise ValueError("ActivationStream needs at least one text")
        if self.model_b is not None:
            if self.hook_name_out is not None:
                raise ValueError("a paired stream (model_b) reads one hook; drop hook_name_out")
            sizes = (self.model.architecture.d_vocab, self.model_b.architecture.d_vocab)
            if sizes[0] != sizes[1]:
                raise ValueError(f"model and model_b must share a tokenizer; their vocabularies are {sizes}")
            stop_layer(self.model_b, self.hook_name)
        names = [self.hook_name] if self.hook_name_out is None else [self.hook_name, self.hook_name_out]
        stops = [stop_layer(self.model, name) for name in names]
        self.names = names
        self.stop = None if None in stops else max(stops)
        probe = self._forward(list(self.texts[:1]))
        self.d_in, self.d_out = probe[0].shape[-1], probe[-1].shape[-1]

    @torch.no_grad()
    def _forward(self, texts: list[str]) -> list[Tensor]:
        model = self.model
        tokens, mask = model.encode(texts)
        tokens, mask = tokens[:, : self.context], mask[:, : self.context]
        keep = content_tokens(model, tokens, mask)
        kwargs = {} if self.stop is None else {"stop_at_layer": self.stop}
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=self.names, **kwargs)
        rows = [cache[name][keep].flatten(1) for name in self.names]
        if self.model_b is not None:
            stop = stop_layer(self.model_b, self.hook_name)
            device = self.model_b.device
            _, cache_b = self.model_b.run_with_cache(
                tokens.to(device),
                attention_mask=mask.to(device),
                names_filter=self.names,
                **({} if stop is None else {"stop_at_layer": stop}),
            )
            rows = [torch.cat([rows[0], cache_b[self.hook_name][keep.to(device)].flatten(1).to(rows[0])], -1)]
        if self.outlier_ratio is not None:
            rows = [r[typical_tokens(rows[0], self.outlier_ratio)] for r in rows]
        return rows

    def token_batches(self) -> Iterator[list[Float[Tensor, "batch _"]]]:
        """Activations of successive groups of texts, cycling through the texts forever."""
        order = torch.randperm(len(self.texts), generator=torch.Generator().manual_seed(self.seed)).tolist()
        while True:
            for start in range(0, len(order), self.texts_per_forward):
                yield self._forward([self.texts[i] for i in order[start : start + self.texts_per_forward]])

    def batches(
        self, batch_size: int
    ) -> Iterator[
        Float[Tensor, "batch d_in"] | tuple[Float[Tensor, "batch d_in"], Float[Tensor, "batch d_out"]]
    ]:
        """Shuffled training batches ``[batch_size, d_in]`` (transcoders: ``(input, output)`` pairs)."""
        rows = (torch.cat(parts, dim=-1).float() for parts in self.token_batches())
        for batch in shuffled_batches(rows, batch_size, self.buffer_tokens, seed=self.seed + 1):
            yield self._split(batch)

    def _split(self, rows: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.hook_name_out is None:
            return rows
        return rows[:, : self.d_in], rows[:, self.d_in :]
