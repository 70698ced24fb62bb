"""Count the aten operations a call launches (its "work ops"), deterministically.

On a GPU a patching sweep over a small model is bound by how many kernels the CPU
launches, not by arithmetic. ``WorkOpCounter`` is a ``TorchDispatchMode`` that counts
every aten operation that reaches dispatch except those that only make views or read
metadata (``VIEW_AND_METADATA_OPS``), so the count is the same on every machine and can
be asserted in tests and printed beside timings.

Example:
    >>> with WorkOpCounter() as ops:
    ...     model(tokens)
    >>> ops.total, ops.most_common(3)

Run as a script to count the calls of the launch budget on SmolLM2-135M with the README's
IOI pair:

    .venv/bin/python benchmarks/op_count.py [--dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VIEW_AND_METADATA_OPS = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "t",
        "transpose",
        "permute",
        "expand",
        "expand_as",
        "view_as",
        "slice",
        "select",
        "unsqueeze",
        "squeeze",
        "as_strided",
        "alias",
        "detach",
        "unbind",
        "split",
        "split_with_sizes",
        "chunk",
        "narrow",
        "flatten",
        "unflatten",
        "movedim",
        "diagonal",
        "lift_fresh",
        "size",
        "stride",
        "dim",
        "numel",
        "item",
        "_local_scalar_dense",
        "is_nonzero",
        "equal",
    }
)


def _op_name(func) -> str:
    """``aten.add_.Tensor`` -> ``add_``."""
    return func._schema.name.split("::")[-1]


class WorkOpCounter(TorchDispatchMode):
    """Counts dispatched aten ops by name, leaving out views and metadata reads."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _op_name(func)
        if name not in VIEW_AND_METADATA_OPS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def most_common(self, n: int = 10) -> list[tuple[str, int]]:
        return self.counts.most_common(n)


def count_work_ops(call: Callable[[], object]) -> WorkOpCounter:
    """Run ``call()`` once under a ``WorkOpCounter`` and return the counter."""
    with WorkOpCounter() as counter:
        call()
    return counter


CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"

BUDGETS = {
    "one forward": 1_500,
    "resid_pre sweep": 4_000,
    "head sweep, all positions": 3_500,
    "head sweep, by position": 6_000,
}


def budget_calls(model) -> dict[str, Callable[[], object]]:
    """The calls of the launch budget on ``model`` with the IOI pair (``patch_sweep``,
    positional logit difference, no progress bar)."""
    from mechinterp.metrics import LogitDifference
    from mechinterp.patching import SweepSpec, patch_sweep

    clean, corrupt = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    metric = LogitDifference.last_position(
        torch.ones_like(clean),
        correct=[model.to_single_token(" Mary")],
        incorrect=[model.to_single_token(" John")],
    )

    def sweep(spec):
        return lambda: patch_sweep(model, clean, corrupt, spec, metric, progress=False)

    return {
        "one forward": lambda: model(clean),
        "resid_pre sweep": sweep(SweepSpec(kind="resid_pre")),
        "head sweep, all positions": sweep(SweepSpec(kind="z", per_position=False)),
        "head sweep, by position": sweep(SweepSpec(kind="z")),
    }


def main() -> None:
    import mechinterp

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--top", type=int, default=6, help="most frequent ops to list per call")
    args = parser.parse_args()
    model = mechinterp.load_model("smollm2-135m", dtype=getattr(torch, args.dtype))
    print(f"SmolLM2-135M {args.dtype}, IOI pair ({model.to_tokens(CLEAN).shape[1]} tokens)")
    with torch.no_grad():
        for label, call in budget_calls(model).items():
            counter = count_work_ops(call)
            verdict = "ok" if counter.total <= BUDGETS[label] else "OVER"
            common = ", ".join(f"{name} {n}" for name, n in counter.most_common(args.top))
            print(f"{label:28}{counter.total:8,d} / {BUDGETS[label]:6,d} {verdict:5} {common}")


if __name__ == "__main__":
    main()
