"""``ModelSpec``: how to build a model, sent to workers instead of the model itself.

A Ray worker builds its own replica from the spec (a few bytes) rather than receiving a
pickled module (the whole weights, through the object store, for every worker).

Example:
    >>> spec = ModelSpec(source="smollm2-135m", options={"dtype": "float32"})
    >>> model = spec.build()       # what every worker runs
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A ``load_model`` source and its keyword options.

    ``source`` is what ``load_model`` takes by name (an embedded or toy model, a hub id, a
    local directory, a ``.gguf`` file), or an importable function returning a ``HookedLM``
    or an HF ``(model, tokenizer)`` pair (called with ``args`` and ``kwargs``), e.g.
    ``mechinterp.models.tiny.tiny_hf_model``. ``options`` go to ``load_model`` (``dtype``,
    ``device``, ``device_map``).
    """

    source: str | Path | Callable[..., Any]
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self):
        """The model, as every worker builds it.

        Example:
            >>> ModelSpec(source=tiny_hf_model, args=("llama",), options={"device": "cpu"}).build()
        """
        from mechinterp.models.hooked_lm import HookedLM
        from mechinterp.models.loading import load_model

        if isinstance(self.source, (str, Path)):
            if self.args or self.kwargs:
                raise ValueError(
                    "args and kwargs go to a builder function; a named source takes options only"
                )
            return load_model(self.source, **self.options)
        if not callable(self.source):
            raise TypeError(
                f"ModelSpec.source must be a name, a path or a builder function, got {type(self.source).__name__}"
            )
        built = self.source(*self.args, **self.kwargs)
        if isinstance(built, HookedLM):
            if self.options:
                raise ValueError("options apply to load_model; a builder returning a HookedLM takes none")
            return built
        if isinstance(built, tuple) and len(built) == 2:
            hf_model, tokenizer = built
            return load_model(hf_model, tokenizer=tokenizer, **self.options)
        raise TypeError(
            f"the builder {self.source.__name__} returned {type(built).__name__}; "
            "expected a HookedLM or an HF (model, tokenizer) pair"
        )


def fingerprint(model) -> tuple[str, float]:
    """A cheap identity check of a model's weights: its name and a float64 sum over the
    first and last 1,024 values of every parameter (computed on the CPU, so replicas on
    any device agree exactly)."""
    total = 0.0
    for parameter in model.parameters():
        flat = parameter.detach().reshape(-1)
        ends = torch.cat([flat[:1024], flat[-1024:]]) if flat.numel() > 2048 else flat
        total += float(ends.cpu().double().sum())
    return model.architecture.model_name, total
