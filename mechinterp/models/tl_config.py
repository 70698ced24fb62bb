"""``HookedLM.cfg``: the TransformerLens config view of a model, whose writes take effect.

TL utilities read ``model.cfg`` (a ``TransformerLensConfig``); TL users also *write* some of
its fields (``model.cfg.use_attn_result = True``). The view is rebuilt from the model on every
access, so a write must go to the model itself: the runtime switches TL lets users set are
forwarded to the model's setters, and every other write raises, naming what to do instead
(architecture fields are fixed when a model is loaded).

Example:
    >>> model.cfg.use_attn_result = True          # same as model.set_use_attn_result(True)
    >>> model.cfg.n_layers = 3
    AttributeError: model.cfg.n_layers is fixed by the architecture ...
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from transformer_lens.config import TransformerLensConfig


def _set_prepend_bos(model: Any, value: bool) -> None:
    model.default_prepend_bos = bool(value)


SETTERS: dict[str, tuple[str, Callable[[Any, Any], None]]] = {
    "use_attn_result": ("model.set_use_attn_result(...)", lambda m, v: m.set_use_attn_result(bool(v))),
    "use_split_qkv_input": (
        "model.set_use_split_qkv_input(...)",
        lambda m, v: m.set_use_split_qkv_input(bool(v)),
    ),
    "default_prepend_bos": ("model.default_prepend_bos = ...", _set_prepend_bos),
    "device": ("model.to(device)", lambda m, v: m.to(device=torch.device(v))),
    "dtype": ("model.to(dtype)", lambda m, v: m.to(dtype=v)),
}
"""Writable fields: what TL calls them -> (the model's own setter, how to apply a value)."""

_NOT_HERE = {
    "use_hook_mlp_in": "blocks.{l}.hook_mlp_in always fires on this model; nothing to switch on",
    "use_attn_in": "per-head attention inputs are hook_q_input/k_input/v_input: model.set_use_split_qkv_input(True)",
    "ungroup_grouped_query_attention": "model.W_K / W_V are already per query head (W_K_grouped holds the kv heads)",
}


class ModelConfigView(TransformerLensConfig):
    """A ``TransformerLensConfig`` describing one ``HookedLM``; see the module docstring."""

    def __init__(self, model: Any, **fields: Any):
        object.__setattr__(self, "_model", weakref.ref(model))
        object.__setattr__(self, "_built", False)
        super().__init__(**fields)
        object.__setattr__(self, "_built", True)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def __setattr__(self, name: str, value: Any) -> None:
        if not self.__dict__.get("_built", False):  # the dataclass __init__ filling the fields
            object.__setattr__(self, name, value)
            return
        if name in SETTERS:
            model = self._model()
            if model is None:
                raise RuntimeError("this config view outlived its model")
            SETTERS[name][1](model, value)
            object.__setattr__(self, name, value)
            return
        writable = ", ".join(f"{field} ({setter})" for field, (setter, _) in SETTERS.items())
        if name in _NOT_HERE:
            raise AttributeError(f"model.cfg.{name} has no effect here: {_NOT_HERE[name]}")
        if name in self.__dataclass_fields__:
            raise AttributeError(
                f"model.cfg.{name} is fixed by the architecture (model.architecture) when the model "
                f"is loaded; load another model to change it. Writable fields: {writable}"
            )
        raise AttributeError(f"model.cfg has no field {name!r}. Writable fields: {writable}")
