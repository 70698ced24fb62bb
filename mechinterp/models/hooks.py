"""Hook points of a ``HookedLM``: opt-in hooks, checked hook names, hooks for a block of code,
caching, and splicing modules into hooks (``HookingMixin``).

Hook names are TransformerLens names; every hook added through the model is checked first,
so an unknown name lists the closest valid ones and a switched-off opt-in hook
(``hook_result``, the per-head q/k/v inputs) says how to switch it on instead of silently
never firing. Everything temporary (hooks, opt-in switches, spliced SAEs) is undone by a
context manager, also on an exception.

Example:
    >>> with model.per_head_hooks(results=True):
    ...     _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_result"])
    >>> model.check_hook_name("blocks.0.hook_resid_prex")   # ValueError: closest: blocks.0.hook_resid_pre, ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mechinterp.models.cache import HookedLMCache
from mechinterp.models.splicing import Splice, splice_modules


class HookingMixin:
    """Hook methods of ``HookedLM``; placed before ``HookedRootModule`` in its bases, whose
    ``add_hook``, ``hooks`` and ``run_with_cache`` these check and extend."""

    def set_use_attn_result(self, use: bool) -> None:
        """Turn on ``blocks.{l}.attn.hook_result`` (per-head outputs, ``[batch pos head d_model]``)."""
        for block in self.blocks:
            block.attn.use_attn_result = use

    def set_use_split_qkv_input(self, use: bool) -> None:
        """Turn on per-head inputs ``blocks.{l}.hook_q_input|k_input|v_input``."""
        for block in self.blocks:
            block.use_split_qkv_input = use

    @contextmanager
    def per_head_hooks(self, *, results: bool = False, split_inputs: bool = False) -> Iterator[None]:
        """Turn on ``hook_result`` and/or the per-head q/k/v inputs for the body of a
        ``with`` block; the previous settings come back afterwards, also on an exception.

        Example:
            >>> with model.per_head_hooks(results=True):
            ...     _, cache = model.run_with_cache(tokens)   # cache["blocks.0.attn.hook_result"]
        """
        previous = (self.blocks[0].attn.use_attn_result, self.blocks[0].use_split_qkv_input)
        self.set_use_attn_result(results or previous[0])
        self.set_use_split_qkv_input(split_inputs or previous[1])
        try:
            yield
        finally:
            self.set_use_attn_result(previous[0])
            self.set_use_split_qkv_input(previous[1])

    def saes(self, saes: Sequence[Splice] | Splice, *, use_error_term: bool = False):
        """Context manager splicing sparse autoencoders / transcoders (``mechinterp.sae.SAE``,
        or any other ``Splice``) into their hooks for the body of a ``with`` block; see
        ``mechinterp.sae.splice`` and ``mechinterp.models.splicing``.

        Example:
            >>> with model.saes([sae], use_error_term=True):
            ...     _, cache = model.run_with_cache(tokens)   # cache[f"{sae.hook_name}.hook_sae_acts_post"]
        """
        return splice_modules(self, saes, use_error_term=use_error_term)

    # ------------------------------------------------------------------ checked hooks and caching
    def check_hook_name(self, name: str) -> None:
        """Raise ``ValueError`` if ``name`` is not a hook (naming the closest valid names) or
        is an opt-in hook that is switched off (saying how to switch it on)."""
        if name not in self.hook_dict:
            close = difflib.get_close_matches(name, list(self.hook_dict), n=5, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ValueError(f"unknown hook name {name!r}{hint}")
        switch = self._opt_in_switch(name)
        if switch is not None:
            raise ValueError(
                f"hook {name!r} is switched off, so a hook on it would never fire; switch it on with "
                f"model.{switch}(True) (or for one block of code: with model.per_head_hooks(...):)"
            )

    def _opt_in_switch(self, name: str) -> str | None:
        """The setter that turns on opt-in hook ``name``, if it is switched off."""
        block = self.blocks[int(name.split(".")[1])] if name.startswith("blocks.") else None
        if block is None:
            return None
        if name.endswith(".attn.hook_result") and not block.attn.use_attn_result:
            return "set_use_attn_result"
        split = (".hook_q_input", ".hook_k_input", ".hook_v_input")
        if name.endswith(split) and not block.use_split_qkv_input:
            return "set_use_split_qkv_input"
        return None

    def add_hook(self, name: str | Callable, hook: Callable, *args: Any, **kwargs: Any) -> None:
        if isinstance(name, str):
            self.check_hook_name(name)
        super().add_hook(name, hook, *args, **kwargs)

    def hooks(self, fwd_hooks: Any = (), bwd_hooks: Any = (), *args: Any, **kwargs: Any):
        """Context manager adding hooks for its body and removing them after, even on error.

        Example:
            >>> with model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", lambda x, hook: 0 * x)]):
            ...     logits = model(tokens)
        """
        for name, _ in [*fwd_hooks, *bwd_hooks]:
            if isinstance(name, str):
                self.check_hook_name(name)
        return super().hooks(list(fwd_hooks), list(bwd_hooks), *args, **kwargs)

    def run_with_cache(
        self, *model_args: Any, names_filter: Any = None, remove_batch_dim: bool = False, **kwargs: Any
    ) -> tuple[Any, HookedLMCache]:
        """Run the model and return ``(output, cache)``, the cache a TransformerLens
        ``ActivationCache`` (``HookedLMCache``).

        Accepts TransformerLens' ``names_filter`` (name, list of names or predicate),
        ``device``, ``pos_slice``, ``remove_batch_dim`` and ``incl_bwd``; every other
        keyword goes to ``forward``.

        Example:
            >>> _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"])
        """
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        if isinstance(names, (list, tuple)):
            for name in names:
                self.check_hook_name(name)
        else:  # None or a predicate: the matching hooks that fire (switched-off ones never would)
            wanted = names_filter

            def names_filter(name: str) -> bool:
                return (wanted is None or wanted(name)) and self._opt_in_switch(name) is None

        if "device" not in kwargs and len(set(self.block_devices)) > 1:
            kwargs["device"] = self.device  # a split model caches on its home device
        output, cache_dict = super().run_with_cache(
            *model_args, names_filter=names_filter, remove_batch_dim=remove_batch_dim, **kwargs
        )
        return output, HookedLMCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
