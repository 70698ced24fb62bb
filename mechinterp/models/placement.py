"""Placing a model's blocks across devices (``load_model(..., device_map=...)``).

A model larger than one device keeps its embedding, final norm and unembedding on a
*home* device (``model.device``, where inputs go and outputs come back) and spreads its
blocks over devices in contiguous runs. The block runner moves the residual stream and the
attention context to each block's device; ``run_with_cache`` stores activations on the
home device, so every analysis that works on ``model.device`` works on a split model too.

Example:
    >>> model = load_model("smollm2-135m", device_map="auto")      # every visible GPU
    >>> model = load_model("smollm2-135m", device_map={l: "cuda:0" if l < 15 else "cuda:1" for l in range(30)})
    >>> model.block_devices[:2], model.device
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

DeviceMap = Literal["auto"] | Mapping[int, str | torch.device]


def available_devices() -> list[torch.device]:
    """The devices ``device_map="auto"`` spreads over: every CUDA device, else MPS, else the CPU."""
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        return [torch.device("mps")]
    return [torch.device("cpu")]


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def balanced_map(
    block_bytes: Sequence[int], home_bytes: int, devices: Sequence[torch.device]
) -> tuple[torch.device, ...]:
    """One device per block: contiguous runs of blocks, each device holding about the same
    number of parameter bytes. The first device also holds ``home_bytes`` (embedding and
    unembedding), so it gets fewer blocks.

    Example:
        >>> balanced_map([10] * 4, 0, [torch.device("cuda", 0), torch.device("cuda", 1)])
        (device(type='cuda', index=0), device(type='cuda', index=0), device(type='cuda', index=1), device(type='cuda', index=1))
    """
    if not devices:
        raise ValueError("balanced_map needs at least one device")
    share = (home_bytes + sum(block_bytes)) / len(devices)
    placed, filled = [], home_bytes
    for size in block_bytes:
        index = min(len(devices) - 1, int((filled + size / 2) // share)) if share else 0
        placed.append(devices[index])
        filled += size
    return tuple(placed)


def resolve_device_map(
    model: nn.Module, device_map: DeviceMap
) -> tuple[torch.device, tuple[torch.device, ...]]:
    """``(home device, device of every block)`` of ``model`` (a ``HookedLM``) under
    ``device_map``: ``"auto"`` (balanced over ``available_devices()``, home on the first)
    or ``{block_index: device}`` naming every block (home on block 0's device)."""
    n_layers = len(model.blocks)
    if isinstance(device_map, str):
        if device_map != "auto":
            raise ValueError(
                f"device_map must be 'auto' or a {{block_index: device}} dict, got {device_map!r}"
            )
        devices = available_devices()
        home = _bytes(model) - sum(_bytes(block) for block in model.blocks)
        return devices[0], balanced_map([_bytes(block) for block in model.blocks], home, devices)
    if not isinstance(device_map, Mapping):
        raise TypeError(f"device_map must be 'auto' or a dict, got {type(device_map).__name__}")
    keys = set(device_map)
    missing = sorted(set(range(n_layers)) - keys)
    unknown = sorted(keys - set(range(n_layers)), key=str)
    if missing or unknown:
        raise ValueError(
            f"device_map must name every block 0..{n_layers - 1} exactly once"
            + (f"; missing blocks {missing}" if missing else "")
            + (f"; not blocks of this {n_layers}-layer model: {unknown}" if unknown else "")
        )
    blocks = tuple(torch.device(device_map[layer]) for layer in range(n_layers))
    return blocks[0], blocks


def place_blocks(model: nn.Module, home: torch.device, block_devices: Sequence[torch.device]) -> None:
    """Move ``model``'s blocks to ``block_devices`` (one per block) and everything else
    (embedding, final norm, unembedding, rotary tables) to ``home``."""
    for name, child in model.named_children():
        if name != "blocks":
            child.to(home)
    for name, buffer in model.named_buffers(recurse=False):
        setattr(model, name, buffer.to(home))
    for block, device in zip(model.blocks, block_devices, strict=True):
        block.to(device)
