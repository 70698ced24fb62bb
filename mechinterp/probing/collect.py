"""Collect the activations a probe needs: one hook per layer, one position per example.

Only the requested hook at the requested position is kept (never the full cache), in
batches; ``path=`` writes a memory-mapped ``.npy`` file so datasets larger than RAM work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int, Num
from torch import Tensor
from tqdm.auto import tqdm

from mechinterp.metrics import last_positions
from mechinterp.probing.datasets import ProbeDataset


@dataclass(frozen=True, eq=False)
class Activations:
    """``values``: ``[layer, example, d_model]`` (float32, possibly memory-mapped), with the
    labels, each example's word type id for control tasks (the dataset's ``types``, else
    the token read) and provenance."""

    values: Float[Tensor, "layer example d_model"]
    labels: Num[Tensor, " example"]
    type_ids: Int[Tensor, " example"]
    layers: list[int]
    hook: str
    model_name: str
    n_layers: int


@torch.no_grad()
def collect_activations(
    model,
    dataset: ProbeDataset,
    *,
    hook: str = "hook_resid_post",
    layers: list[int] | None = None,
    batch_size: int = 32,
    path: str | Path | None = None,
    progress: bool = True,
) -> Activations:
    """Activations at ``blocks.{layer}.{hook}`` for every layer (or ``layers``), read at each
    example's position (its last real token unless the dataset gives positions).

    Example:
        >>> acts = collect_activations(model, number_agreement(400))
        >>> acts.values.shape           # [layer, example, d_model]
    """
    layers = list(range(model.architecture.n_layers)) if layers is None else list(layers)
    names = [f"blocks.{layer}.{hook}" for layer in layers]
    for name in names:
        model.check_hook_name(name)
    n = len(dataset)
    shape = (len(layers), n, model.architecture.d_model)
    if path is not None:
        storage = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=shape)
    else:
        storage = np.empty(shape, dtype=np.float32)
    token_ids = torch.empty(n, dtype=torch.long)
    for start in tqdm(range(0, n, batch_size), desc="collecting activations", disable=not progress):
        stop = min(start + batch_size, n)
        tokens, mask = model.encode(dataset.texts[start:stop])
        if dataset.positions is None:
            positions = last_positions(mask)
        else:
            positions = torch.tensor(dataset.positions[start:stop], device=model.device)
            if (positions >= mask.sum(1)).any() or (positions < 0).any():
                raise ValueError(f"a dataset position in examples {start}..{stop - 1} lies outside its text")
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
        rows = torch.arange(stop - start, device=model.device)
        for i, name in enumerate(names):
            storage[i, start:stop] = cache[name][rows, positions].float().cpu().numpy()
        token_ids[start:stop] = tokens[rows, positions].cpu()
    if path is not None:
        storage.flush()
    if dataset.types is not None:
        vocabulary = {word: i for i, word in enumerate(sorted(set(dataset.types)))}
        type_ids = torch.tensor([vocabulary[word] for word in dataset.types])
    else:
        type_ids = token_ids
    return Activations(
        values=torch.from_numpy(storage),
        labels=torch.tensor(dataset.labels),
        type_ids=type_ids,
        layers=layers,
        hook=hook,
        model_name=model.architecture.model_name,
        n_layers=model.architecture.n_layers,
    )
