"""Numeric precision switches.

Models may be loaded in ``bfloat16`` / ``float16`` (``load_model(..., dtype=...)``); every
algorithm then runs in that dtype and accumulates metrics and attributions in float32.
Float32 models on CUDA can additionally let matrix products use TF32 tensor cores: inputs
are rounded to 10 mantissa bits, products accumulate in float32. That is several times
faster on Ampere and later GPUs, at about 1e-3 relative error per product; it is off by
default, and the switch below turns it on for a block of code only.

Example:
    >>> with mechinterp.tf32_matmuls():
    ...     result = patch_sweep(model, clean, corrupt, SweepSpec(kind="resid_pre"), metric)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def tf32_matmuls(enabled: bool = True) -> Iterator[None]:
    """Allow (or, with ``enabled=False``, forbid) TF32 for float32 CUDA matrix products in
    the body of a ``with`` block; the previous setting comes back afterwards, also on an
    exception. CPU computations are unaffected."""
    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = "tf32" if enabled else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = previous
