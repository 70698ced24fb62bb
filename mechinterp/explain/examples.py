"""Collect, for many units at once, the contexts that explain and test them.

The corpus is read once: texts are cut into token windows of ``context_len`` (each with the
model's BOS in front, which is never scored), run in batches with hooks on exactly the hooks
the units read, and the forward stops after the deepest block any unit needs
(``stop_at_layer``). Per unit we keep, as in OpenAI (2023) and EleutherAI's delphi
(Paulo et al. 2024, arXiv 2410.13928):

- ``top``: the ``n_top`` contexts with the largest activation (shown to the explainer);
- ``quantile``: ``n_per_quantile`` random activating contexts from each of ``n_quantiles``
  equal-count bins of the remaining activating contexts (held out: scoring positives);
- ``random``: ``n_random`` random non-activating contexts (held out: scoring negatives);
- ``similar``: ``n_similar`` (default 0) non-activating contexts that contain a token the
  unit is active on in its top contexts: hard negatives (delphi), where the token alone does
  not make the unit fire (held out: scoring negatives too).

A token is *active* when its activation exceeds ``active_fraction`` times the unit's largest
activation on the corpus (for an SAE latent any positive activation counts when
``active_fraction=0``); a context is activating when one of its tokens is. The top contexts
are tracked while streaming; the corpus-wide maximum of every context is kept, and after the
pass the sampled contexts' token activations are recomputed from their stored token ids in a
few batched forwards (the corpus itself is not read again).

Example:
    >>> examples = collect_examples(model, [Unit.neuron(3, 17)], texts, context_len=32)
    >>> examples[0].top[0].marked()         # 'the <<1984>> season ...'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookPoint

from mechinterp.data.corpus import load_corpus
from mechinterp.explain.units import Unit, encode_latents

ContextKind = Literal["top", "quantile", "random", "similar"]
CONTEXT_KINDS: tuple[ContextKind, ...] = ("top", "quantile", "random", "similar")


@dataclass(frozen=True, kw_only=True)
class Context:
    """One window of text with the unit's activation at each token (BOS excluded)."""

    tokens: tuple[str, ...]
    activations: tuple[float, ...]
    kind: ContextKind
    threshold: float
    quantile: int | None = None

    @property
    def max_activation(self) -> float:
        return max(self.activations)

    @property
    def active(self) -> tuple[bool, ...]:
        return tuple(a > self.threshold for a in self.activations)

    def marked(self, marks: Sequence[bool] | None = None) -> str:
        """The text with marked tokens (default: the active ones) as ``<<token>>``."""
        marks = self.active if marks is None else marks
        return "".join(f"<<{t}>>" if m else t for t, m in zip(self.tokens, marks, strict=True)).replace(
            ">><<", ""
        )

    def to_dict(self) -> dict:
        return {
            "tokens": list(self.tokens),
            "activations": [round(a, 5) for a in self.activations],
            "kind": self.kind,
            "threshold": self.threshold,
            "quantile": self.quantile,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Context:
        return cls(
            tokens=tuple(data["tokens"]),
            activations=tuple(data["activations"]),
            kind=data["kind"],
            threshold=data["threshold"],
            quantile=data["quantile"],
        )


@dataclass(frozen=True, kw_only=True)
class UnitExamples:
    """The contexts kept for one unit, and its corpus statistics."""

    unit: Unit
    top: tuple[Context, ...]
    quantile: tuple[Context, ...]
    random: tuple[Context, ...]
    similar: tuple[Context, ...] = ()
    max_activation: float
    threshold: float
    activating_fraction: float

    @property
    def label(self) -> str:
        return self.unit.label

    def to_dict(self) -> dict:
        return {
            "label": self.unit.label,
            "max_activation": self.max_activation,
            "threshold": self.threshold,
            "activating_fraction": self.activating_fraction,
            **{kind: [c.to_dict() for c in getattr(self, kind)] for kind in CONTEXT_KINDS},
        }


@dataclass(frozen=True, kw_only=True)
class ExampleConfig:
    """How many contexts of which kind, and how long.

    ``max_contexts`` stops reading the corpus after that many windows (``None``: read it all).
    """

    context_len: int = 32
    batch_size: int = 16
    n_top: int = 10
    n_quantiles: int = 5
    n_per_quantile: int = 2
    n_random: int = 10
    n_similar: int = 0
    active_fraction: float = 0.2
    max_contexts: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.context_len < 2:
            raise ValueError(f"context_len must be at least 2, got {self.context_len}")
        if not 0.0 <= self.active_fraction < 1.0:
            raise ValueError(f"active_fraction must be in [0, 1), got {self.active_fraction}")


def default_corpus() -> list[str]:
    """The corpus examples come from when none is given: the offline English corpus's training
    split (WordNet glosses and standard-library docstrings, ``mechinterp.data.corpus``)."""
    return load_corpus("default", "train")


def examples_for(
    model,
    units: Sequence[Unit],
    corpus: Iterable[str] | None,
    examples: Sequence[UnitExamples] | None = None,
    config: ExampleConfig | None = None,
) -> list[UnitExamples]:
    """``examples`` when given (checked to be for exactly ``units``, in order), else
    ``collect_examples`` from ``corpus`` (default: ``default_corpus()``)."""
    if examples is None:
        return collect_examples(model, units, default_corpus() if corpus is None else corpus, config)
    if [e.unit for e in examples] != list(units):
        raise ValueError("examples must be collect_examples output for exactly these units, in order")
    return list(examples)


def collect_examples(
    model,
    units: Sequence[Unit],
    corpus: Iterable[str],
    config: ExampleConfig | None = None,
    *,
    progress: bool = True,
    reader: Callable[[Sequence[list[int]]], Float[Tensor, "_ batch pos"]] | None = None,
    **options,
) -> list[UnitExamples]:
    """Stream ``corpus`` (an iterable of strings) once and keep examples for every unit.

    ``options`` are ``ExampleConfig`` fields (``context_len=64, n_top=20, ...``) when no
    ``config`` is given. ``progress`` shows a bar of windows read. ``reader`` replaces the
    model's forward for units it cannot compute alone (a crosscoder's latents read two
    models): it maps BOS-prefixed token windows to activations ``[unit, batch, pos]`` (BOS
    dropped, padding ``-inf``), as ``UnitReader`` does.

    Example:
        >>> examples = collect_examples(model, units, texts, n_top=10, max_contexts=2000)
    """
    if config is not None and options:
        raise TypeError(f"pass either config or ExampleConfig fields, not both (got {sorted(options)})")
    config = config or ExampleConfig(**options)
    units = list(units)
    if not units:
        raise ValueError("collect_examples needs at least one unit")
    reader = UnitReader(model, units) if reader is None else reader
    windows, maxima, top = [], [], _TopK(len(units), config.n_top)
    with tqdm(total=config.max_contexts, desc="reading corpus", unit="window", disable=not progress) as bar:
        for batch in _batches(model, corpus, config):
            acts = reader(batch)  # [unit, batch, pos]
            start = len(windows)
            windows.extend(batch)
            maxima.append(acts.amax(dim=-1))
            top.update(acts, start)
            bar.update(len(batch))
    if not windows:
        raise ValueError("the corpus gave no windows of at least 2 tokens; pass longer texts")
    maxima = torch.cat(maxima, dim=1).cpu()  # [unit, context]
    return _select(model, reader, units, windows, maxima, top, config)


class UnitReader:
    """Runs token windows through the model with hooks only on the units' hooks, stopping
    after the deepest block needed, and returns activations ``[unit, batch, pos]`` (BOS
    dropped, padding set to ``-inf``)."""

    def __init__(self, model, units: Sequence[Unit]):
        self.model, self.units = model, list(units)
        for name in {u.hook_name for u in self.units}:
            model.check_hook_name(name)
        block_of = _hook_blocks(model)
        deepest = max(block_of[u.hook_name] for u in self.units)
        self.stop = deepest + 1 if deepest + 1 < model.architecture.n_layers else None

    @torch.no_grad()
    def __call__(self, windows: Sequence[list[int]]) -> Tensor:
        tokens, mask = _pad(windows, self.model)
        found: dict[str, Tensor] = {}

        def keep(value: Tensor, hook: HookPoint) -> None:
            found[hook.name] = self._read(hook.name, value, mask, tokens)

        hooks = [(name, keep) for name in dict.fromkeys(u.hook_name for u in self.units)]
        with self.model.hooks(fwd_hooks=hooks):
            self.model(tokens, attention_mask=mask, stop_at_layer=self.stop, return_type=None)
        acts = torch.stack([found[u.hook_name][i] for i, u in enumerate(self.units)])
        acts = acts[:, :, 1:]  # drop BOS
        return acts.masked_fill(~mask[None, :, 1:].bool(), float("-inf"))

    def _read(self, name: str, value: Tensor, mask: Tensor, tokens: Tensor) -> dict[int, Tensor]:
        """Activations of every unit on hook ``name`` (each SAE encoded once)."""
        out, encoded = {}, {}
        for i, unit in enumerate(self.units):
            if unit.hook_name != name:
                continue
            if unit.kind == "sae_latent":
                key = id(unit.sae)
                if key not in encoded:
                    encoded[key] = encode_latents(unit.sae, value)
                out[i] = encoded[key][..., unit.index]
            else:
                out[i] = unit.activation(self.model, value, mask, tokens)
        return out


class _TopK:
    """Running top-``k`` contexts per unit by their maximum activation."""

    def __init__(self, n_units: int, k: int):
        self.k = k
        self.values = torch.empty(n_units, 0)
        self.index = torch.empty(n_units, 0, dtype=torch.long)
        self.acts: Tensor | None = None

    def update(self, acts: Tensor, start: int) -> None:
        acts = acts.cpu()
        n_units, batch, n_pos = acts.shape
        index = torch.arange(start, start + batch).expand(n_units, -1)
        if self.acts is not None and self.acts.shape[-1] < n_pos:
            self.acts = torch.nn.functional.pad(
                self.acts, (0, n_pos - self.acts.shape[-1]), value=float("-inf")
            )
        elif self.acts is not None and self.acts.shape[-1] > n_pos:
            acts = torch.nn.functional.pad(acts, (0, self.acts.shape[-1] - n_pos), value=float("-inf"))
        values = torch.cat([self.values, acts.amax(dim=-1)], dim=1)
        all_index = torch.cat([self.index, index], dim=1)
        all_acts = acts if self.acts is None else torch.cat([self.acts, acts], dim=1)
        keep = values.topk(min(self.k, values.shape[1]), dim=1).indices
        self.values = values.gather(1, keep)
        self.index = all_index.gather(1, keep)
        self.acts = all_acts.gather(1, keep[..., None].expand(-1, -1, all_acts.shape[-1]))


def _select(model, reader, units, windows, maxima, top: _TopK, config: ExampleConfig) -> list[UnitExamples]:
    rng = np.random.default_rng(config.seed)
    unit_max = maxima.amax(dim=1)
    plans = []
    for u in range(len(units)):
        threshold = config.active_fraction * max(float(unit_max[u]), 0.0)
        top_ids = [int(i) for i, v in zip(top.index[u], top.values[u], strict=True) if v > threshold]
        taken = set(top_ids)
        activating = [i for i in np.argsort(maxima[u].numpy()) if maxima[u, i] > threshold and i not in taken]
        quantiles = []
        if activating:
            for q, part in enumerate(np.array_split(np.array(activating), config.n_quantiles)):
                n = min(config.n_per_quantile, len(part))
                quantiles += [(int(i), q) for i in rng.choice(part, size=n, replace=False)] if n else []
        quiet = np.flatnonzero(maxima[u].numpy() <= threshold)
        randoms = [int(i) for i in rng.choice(quiet, size=min(config.n_random, len(quiet)), replace=False)]
        similar = _similar(u, top, top_ids, threshold, windows, quiet, set(randoms), config.n_similar, rng)
        plans.append((threshold, top_ids, quantiles, randoms, similar))
    needed = sorted({i for _, _, q, r, h in plans for i in [*(j for j, _ in q), *r, *h]})
    recomputed = {}
    for chunk in range(0, len(needed), config.batch_size):
        ids = needed[chunk : chunk + config.batch_size]
        acts = reader([windows[i] for i in ids]).cpu()
        for row, i in enumerate(ids):
            recomputed[i] = acts[:, row]
    decode = _Decoder(model)
    results = []
    for u, (threshold, top_ids, quantiles, randoms, similar) in enumerate(plans):

        def context(
            i: int, acts: Tensor, kind: ContextKind, q: int | None = None, threshold=threshold
        ) -> Context:
            n = len(windows[i]) - 1
            return Context(
                tokens=decode(windows[i][1:]),
                activations=tuple(float(a) for a in acts[:n]),
                kind=kind,
                threshold=threshold,
                quantile=q,
            )

        rank = {int(i): r for r, i in enumerate(top.index[u])}
        results.append(
            UnitExamples(
                unit=units[u],
                top=tuple(context(i, top.acts[u, rank[i]], "top") for i in top_ids),
                quantile=tuple(context(i, recomputed[i][u], "quantile", q) for i, q in quantiles),
                random=tuple(context(i, recomputed[i][u], "random") for i in randoms),
                similar=tuple(context(i, recomputed[i][u], "similar") for i in similar),
                max_activation=float(unit_max[u]),
                threshold=threshold,
                activating_fraction=float((maxima[u] > threshold).float().mean()),
            )
        )
    return results


def _similar(u, top: _TopK, top_ids, threshold, windows, quiet, taken: set[int], n: int, rng) -> list[int]:
    """Up to ``n`` non-activating windows (``quiet``, not in ``taken``) holding a token the
    unit is active on in one of its top windows."""
    if n == 0:
        return []
    rank = {int(i): r for r, i in enumerate(top.index[u])}
    active_tokens = {
        windows[i][1 + p]
        for i in top_ids
        for p, a in enumerate(top.acts[u, rank[i]][: len(windows[i]) - 1].tolist())
        if a > threshold
    }
    candidates = [int(i) for i in quiet if int(i) not in taken and active_tokens & set(windows[i][1:])]
    return (
        [int(i) for i in rng.choice(candidates, size=min(n, len(candidates)), replace=False)]
        if candidates
        else []
    )


class _Decoder:
    """Token id -> display string, memoised."""

    def __init__(self, model):
        self.tokenizer = model._require_tokenizer()
        self.cache: dict[int, str] = {}

    def __call__(self, ids: Sequence[int]) -> tuple[str, ...]:
        for i in ids:
            if i not in self.cache:
                self.cache[i] = self.tokenizer.decode([i])
        return tuple(self.cache[i] for i in ids)


def _batches(model, corpus: Iterable[str], config: ExampleConfig):
    """Lists of BOS-prefixed token windows, ``batch_size`` at a time."""
    if isinstance(corpus, str):
        raise TypeError("corpus must be an iterable of strings, not one string; wrap it in a list")
    tokenizer = model._require_tokenizer()
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("collect_examples prepends the model's BOS token, but its tokenizer has none")
    batch, count, body = [], 0, config.context_len - 1
    for text in corpus:
        ids = tokenizer.encode(text, add_special_tokens=False)
        for start in range(0, len(ids), body):
            piece = ids[start : start + body]
            if len(piece) < 2:
                continue
            batch.append([bos, *piece])
            count += 1
            if len(batch) == config.batch_size:
                yield batch
                batch = []
            if config.max_contexts is not None and count >= config.max_contexts:
                if batch:
                    yield batch
                return
    if batch:
        yield batch


def _pad(windows: Sequence[list[int]], model) -> tuple[Tensor, Tensor]:
    width = max(len(w) for w in windows)
    tokens = torch.zeros(len(windows), width, dtype=torch.long)
    mask = torch.zeros(len(windows), width, dtype=torch.long)
    for i, w in enumerate(windows):
        tokens[i, : len(w)] = torch.tensor(w)
        mask[i, : len(w)] = 1
    return tokens.to(model.device), mask.to(model.device)


def _hook_blocks(model) -> dict[str, int]:
    """Hook name -> the block that must run for it to fire: its own block, ``-1`` for the
    embedding hooks (before block 0), ``n_layers`` for hooks after the last block."""
    blocks = {}
    for name, module in model.named_modules():
        if isinstance(module, HookPoint) and not name.startswith("blocks."):
            blocks[name] = -1 if name.startswith("hook_") else model.architecture.n_layers
    for index, block in enumerate(model.blocks):
        for name, module in block.named_modules():
            if isinstance(module, HookPoint):
                blocks[f"blocks.{index}.{name}"] = index
    return blocks
