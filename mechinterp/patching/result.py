"""``PatchResult``: patching values with their axes, labels and baselines.

Values are kept per example (last axis ``batch``) whenever the metric gives per-example
values; ``mean()`` averages them. ``normalized()`` maps the unpatched base run to 0 and
the source run to 1 (for denoising: 0 = corrupted, 1 = clean).

Example:
    >>> result = patch_sweep(model, clean, corrupt, SweepSpec(kind="resid_pre"), metric)
    >>> result.mean().shape            # [layer, pos]
    >>> result.to_dataframe().head()
    >>> result.save("runs/resid_pre")  # resid_pre.safetensors + resid_pre.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class PatchResult:
    """Attributes:
    values: ``[*grid]`` or ``[*grid, batch]`` metric values of the patched runs.
    axes: names of the grid axes (``layer``, ``pos``, ``head``, ``dest_pos``, ``src_pos``).
    labels: a label per index of each axis (positions carry their string tokens).
    base: the metric on the unpatched base run (``[batch]`` or a scalar).
    source: the metric on the source run, when there is one (resample ablation).
    per_example: whether ``values`` ends in a ``batch`` axis.
    metadata: kind, direction, ablation, model, metric name.
    """

    values: Float[Tensor, "*cell"]  # the grid's axes, then batch when per_example
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    base: Float[Tensor, "*batch"]
    source: Float[Tensor, "*batch"] | None = None
    per_example: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = len(self.axes) + (1 if self.per_example else 0)
        if self.values.ndim != expected:
            raise ValueError(f"values has {self.values.ndim} axes, expected {expected} for axes {self.axes}")

    @property
    def shape(self) -> torch.Size:
        return self.mean().shape

    def mean(self) -> Float[Tensor, "*cell"]:
        """Values averaged over examples: ``[*grid]``."""
        return self.values.mean(-1) if self.per_example else self.values

    def normalized(self) -> Float[Tensor, "*cell"]:
        """``(value - base) / (source - base)`` on example means: 0 = unpatched base run,
        1 = the source run (clean, when denoising)."""
        if self.source is None:
            raise ValueError("normalized() needs the source run's metric (resample ablation only)")
        base, source = self.base.float().mean(), self.source.float().mean()
        return (self.mean() - base) / (source - base)

    def to_dataframe(self):
        """One row per cell (and example, when per-example) with axis indices and labels."""
        import pandas as pd

        grid = self.values if self.per_example else self.values[..., None]
        index = torch.cartesian_prod(*(torch.arange(n) for n in grid.shape)).reshape(-1, grid.ndim)
        columns = {}
        for i, axis in enumerate(self.axes):
            columns[axis] = index[:, i].numpy()
            columns[f"{axis}_label"] = [self.labels[axis][j] for j in index[:, i].tolist()]
        if self.per_example:
            columns["example"] = index[:, -1].numpy()
        columns["value"] = grid.reshape(-1).float().cpu().numpy()
        return pd.DataFrame(columns)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``PATH.safetensors`` (tensors) and ``PATH.json`` (axes, labels, metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"values": self.values, "base": torch.as_tensor(self.base)}
        if self.source is not None:
            tensors["source"] = torch.as_tensor(self.source)
        tensor_path, json_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tensor_path))
        info = {
            "format_version": FORMAT_VERSION,
            "axes": list(self.axes),
            "labels": self.labels,
            "per_example": self.per_example,
            "metadata": self.metadata,
        }
        json_path.write_text(json.dumps(info, indent=1))
        return tensor_path, json_path

    @classmethod
    def load(cls, path: str | Path) -> PatchResult:
        """Read a result written by ``save``."""
        path = Path(path)
        tensors = load_file(str(path.with_suffix(".safetensors")))
        info = json.loads(path.with_suffix(".json").read_text())
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported PatchResult format {info.get('format_version')!r}")
        return cls(
            values=tensors["values"],
            axes=tuple(info["axes"]),
            labels=info["labels"],
            base=tensors["base"],
            source=tensors.get("source"),
            per_example=info["per_example"],
            metadata=info["metadata"],
        )
