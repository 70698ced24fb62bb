"""Shard results kept on disk, so a killed run resumes without redoing finished shards.

``Checkpointed(executor, folder)`` is an executor: it runs only the shards whose results
are not yet in ``folder`` and writes each result there as soon as it arrives (safetensors
for tensors, JSON for the rest; written to a temporary file and renamed, so a half-written
file never counts). A shard's file is named by a hash of the task and the shard's inputs,
so a changed sweep never reads an old result.

Example:
    >>> executor = Checkpointed(RayExecutor(spec), Path("runs/ioi/shards/resid_pre"))
    >>> patch_sweep(model, clean, corrupt, spec, metric, executor=executor)   # kill it, rerun it
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mechinterp.patching.shards import Executor


def _digest(value: Any, sha: Any) -> None:
    if isinstance(value, Tensor):
        sha.update(f"tensor{tuple(value.shape)}{value.dtype}".encode())
        sha.update(value.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        sha.update(type(value).__qualname__.encode())
        for field in dataclasses.fields(value):
            sha.update(field.name.encode())
            _digest(getattr(value, field.name), sha)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _digest(item, sha)
    else:
        sha.update(repr(value).encode())


def shard_key(task: Any, shard: Any) -> str:
    """A hash of the task's settings and the shard's inputs (tensor bytes included)."""
    sha = hashlib.sha256()
    _digest(task, sha)
    _digest(shard, sha)
    return sha.hexdigest()[:32]


def save_result(path: Path, result: dict[str, Any]) -> None:
    """Write a shard result (tensors and JSON-able values) atomically."""
    tensors = {name: value.contiguous() for name, value in result.items() if isinstance(value, Tensor)}
    other = {name: value for name, value in result.items() if not isinstance(value, Tensor)}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={"values": json.dumps(other)})
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_result(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        other = json.loads(handle.metadata()["values"])
    return {**load_file(path), **other}


@dataclass(frozen=True)
class Checkpointed:
    """An executor that keeps every finished shard's result in ``folder`` and skips shards
    found there (see the module docstring). Results must be dicts of tensors and JSON-able
    values."""

    executor: Executor
    folder: Path

    def shard_size(self, n_items: int) -> int:
        return self.executor.shard_size(n_items)

    def map(
        self,
        model,
        task,
        shards: Sequence[Any],
        *,
        sizes: Sequence[int],
        progress: bool,
        description: str,
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{shard_key(task, shard)}.safetensors" for shard in shards]
        results: dict[int, Any] = {i: load_result(path) for i, path in enumerate(paths) if path.is_file()}
        todo = [i for i in range(len(shards)) if i not in results]

        def keep(position: int, result: Any) -> None:
            save_result(paths[todo[position]], result)
            if on_result is not None:
                on_result(todo[position], result)

        if todo:
            fresh = self.executor.map(
                model,
                task,
                [shards[i] for i in todo],
                sizes=[sizes[i] for i in todo],
                progress=progress,
                description=description,
                on_result=keep,
            )
            results.update(zip(todo, fresh, strict=True))
        return [results[i] for i in range(len(shards))]
