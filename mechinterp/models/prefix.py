"""Keys and values of a shared prefix, so a forward pass can compute only later positions.

In a causal model nothing at positions ``>= p`` can change positions ``< p``. A run that
differs from an earlier one only from position ``p`` on (a patch at ``p``) can therefore take
the earlier run's keys and values for the first ``p`` positions of every layer and compute
the suffix alone. The batched patching engine uses this; ``HookedLM.forward(past=...)``
accepts it.

Example:
    >>> _, cache = model.run_with_cache(tokens, names_filter=KeyValuePrefix.hook_filter(model))
    >>> past = KeyValuePrefix.from_cache(cache, model, length=5)
    >>> suffix_logits = model(tokens[:, 5:], past=past)   # == model(tokens)[:, 5:]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class KeyValuePrefix:
    """Per-layer keys (after rotary) and values ``[batch, length, kv_head, d_head]``."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def layer(self, index: int, rows: int | None = None) -> tuple[Tensor, Tensor]:
        """One layer's keys and values, of the first ``rows`` rows (all by default)."""
        if rows is None or rows == self.batch:
            return self.keys[index], self.values[index]
        return self.keys[index][:rows], self.values[index][:rows]

    def truncate(self, length: int) -> KeyValuePrefix:
        """The first ``length`` positions (views, no copy)."""
        return KeyValuePrefix(
            tuple(k[:, :length] for k in self.keys), tuple(v[:, :length] for v in self.values)
        )

    def select(self, examples: Tensor) -> KeyValuePrefix:
        """One prefix row per entry of ``examples`` (indices into this prefix's batch); a
        prefix of one example is expanded (a view, no copy)."""
        if self.batch == 1:
            rows = len(examples)
            return KeyValuePrefix(
                tuple(k.expand(rows, *k.shape[1:]) for k in self.keys),
                tuple(v.expand(rows, *v.shape[1:]) for v in self.values),
            )
        return KeyValuePrefix(
            tuple(k.index_select(0, examples) for k in self.keys),
            tuple(v.index_select(0, examples) for v in self.values),
        )

    @staticmethod
    def key_hook(model) -> str:
        """The hook holding attention keys as attention uses them (after rotary)."""
        return "attn.hook_rot_k" if model.rotary is not None else "attn.hook_k"

    @classmethod
    def hook_filter(cls, model) -> Callable[[str], bool]:
        """A ``names_filter`` that caches exactly what ``from_cache`` needs."""
        key_hook = cls.key_hook(model)
        return lambda name: name.endswith(key_hook) or name.endswith("attn.hook_v")

    @classmethod
    def from_cache(cls, cache, model, length: int) -> KeyValuePrefix:
        """The first ``length`` positions of every layer's keys and values in ``cache``."""
        key_hook = cls.key_hook(model)
        layers = range(model.architecture.n_layers)
        return cls(
            tuple(cache[f"blocks.{layer}.{key_hook}"][:, :length] for layer in layers),
            tuple(cache[f"blocks.{layer}.attn.hook_v"][:, :length] for layer in layers),
        )
