"""``HookedLMCache``: TransformerLens' ``ActivationCache`` with clear errors for what a
``HookedLM`` does not have (``resid_mid`` on attention-only models), instead of a
``KeyError`` deep inside TL.

Example:
    >>> _, cache = model.run_with_cache(tokens)       # a HookedLMCache
    >>> cache.accumulated_resid(incl_mid=True)        # attention-only: ValueError saying why
"""

from __future__ import annotations

from typing import Any

from transformer_lens.ActivationCache import ActivationCache


class HookedLMCache(ActivationCache):
    """An ``ActivationCache`` of a ``HookedLM`` run (every TL method works as in TL)."""

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, *args: Any, **kwargs: Any):
        architecture = self.model.architecture
        if incl_mid and architecture.attn_only:
            raise ValueError(
                f"incl_mid=True needs resid_mid (between attention and MLP); {architecture.model_name} "
                "is attention-only and has none: use incl_mid=False (for TL's direct_logit_attribution, "
                "unit='component' or 'head' instead of 'layer')"
            )
        return super().accumulated_resid(layer, incl_mid, *args, **kwargs)
