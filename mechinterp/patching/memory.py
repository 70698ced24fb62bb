"""How many patched rows fit in one batched forward: memory budgets and OOM back-off."""

from __future__ import annotations

import os

import torch


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA ``mem_get_info``, else available host RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: assume a modest machine
        return 4 * 2**30


def bytes_per_row(model, n_positions: int, n_logit_positions: int, n_key_positions: int) -> int:
    """A generous estimate of the peak memory one row of a patched forward needs.

    Counts the residual-width temporaries of a block (~12 x d_model), the MLP hidden
    activations (~4 x d_mlp), attention scores and pattern (~3 x heads x keys) per
    position, plus the logits that are kept.
    """
    arch = model.architecture
    per_position = 12 * arch.d_model + 4 * arch.d_mlp + 3 * arch.n_heads * n_key_positions
    elements = n_positions * per_position + 2 * n_logit_positions * arch.d_vocab
    return elements * torch.finfo(model.dtype).bits // 8


def memory_budget(device: torch.device, max_memory: int | None = None) -> int:
    """Bytes a chunk may use: ``max_memory``, or half the free memory of ``device``."""
    return max_memory if max_memory is not None else free_memory(device) // 2


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA and host out-of-memory errors."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error)
    return "out of memory" in message or "can't allocate memory" in message
