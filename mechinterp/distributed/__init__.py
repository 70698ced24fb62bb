"""Distributed execution: executors the heavy entry points take, and models as specs.

``LocalExecutor`` (this process) and ``RayExecutor`` (Ray actors, one model replica each,
optional extra ``mechinterp[distributed]``) run the shards of a computation;
``patch_sweep(..., executor=...)`` shards its prompt pairs over them with results equal to
the single-process run. ``Checkpointed(executor, folder)`` keeps finished shards on disk so
a killed run resumes where it stopped. Ray is imported only when a ``RayExecutor`` starts.

This package sits on top of the analysis layers: they define the ``Executor`` protocol
(``mechinterp.patching.shards``, re-exported here) and never import this package.

Example:
    >>> from mechinterp.distributed import ModelSpec, RayExecutor
    >>> with RayExecutor(ModelSpec(source="smollm2-135m"), num_workers=2) as executor:
    ...     result = patch_sweep(model, clean, corrupt, spec, metric, executor=executor)
"""

from mechinterp.distributed.checkpoint import Checkpointed
from mechinterp.distributed.executors import LocalExecutor, RayExecutor
from mechinterp.distributed.spec import ModelSpec
from mechinterp.patching.shards import Executor, select_examples

__all__ = ["Checkpointed", "Executor", "LocalExecutor", "ModelSpec", "RayExecutor", "select_examples"]
