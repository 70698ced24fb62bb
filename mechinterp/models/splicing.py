"""Splicing: modules that stand in for a hook's activation inside ``with model.saes([...])``.

The model does not know what it splices. A module it can splice satisfies the ``Splice``
protocol: it names the hook point whose output it replaces (``splice_hook``) and gives a
context manager that splices it into a model and undoes it (``spliced``). Sparse
autoencoders and transcoders (``mechinterp.sae.SAE``) implement it; the models layer never
imports them.

Example:
    >>> with splice_modules(model, [sae], use_error_term=True):   # what model.saes does
    ...     _, cache = model.run_with_cache(tokens)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mechinterp.models.hooked_lm import HookedLM


@runtime_checkable
class Splice(Protocol):
    """A module that replaces the activation at one hook point while spliced."""

    @property
    def splice_hook(self) -> str:
        """The hook point whose output it replaces."""
        ...

    def spliced(self, model: HookedLM, *, use_error_term: bool) -> AbstractContextManager[object]:
        """A context manager that splices it into ``model`` on entry and removes every trace
        of it on exit. It may add hook points under ``splice_hook``; the caller re-reads the
        model's hook points (``model.setup()``) once all modules are in."""
        ...


@contextmanager
def splice_modules(
    model: HookedLM, modules: Sequence[Splice] | Splice, *, use_error_term: bool = False
) -> Iterator[None]:
    """Splice ``modules`` into ``model`` for the body of a ``with`` block (``model.saes``).

    At most one module per hook point; everything is undone on exit, also on an exception.
    """
    modules = [modules] if isinstance(modules, Splice) else list(modules)
    if not modules:
        raise ValueError("model.saes needs at least one SAE")
    for module in modules:
        if not isinstance(module, Splice):
            raise TypeError(f"expected mechinterp.sae.SAE objects, got {type(module).__name__}; use load_sae")
    targets = [module.splice_hook for module in modules]
    if len(set(targets)) != len(targets):
        raise ValueError(f"two SAEs write the same hook: {targets}")
    with ExitStack() as stack:
        try:
            for module in modules:
                stack.enter_context(module.spliced(model, use_error_term=use_error_term))
            model.setup()
            yield
        finally:
            stack.close()
            model.setup()
