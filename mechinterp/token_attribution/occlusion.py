"""Occlusion (leave one out; Zeiler & Fergus 2014, Li et al. 2016 for text): the attribution
of a position is ``f(x) - f(x with that position replaced)``, the replacement being the
baseline's activation there (a replacement token's embedding, the corrupt prompt's token,
or zeros). For a head site, each (position, head) is occluded on its own.

All occluded copies of all examples are rows of a few batched forwards (no gradients).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechinterp.token_attribution.runner import SiteRunner, over_chunks


@torch.no_grad()
def occlusion(
    runner: SiteRunner,
    actual: Float[Tensor, "batch pos ..."],
    baseline: Float[Tensor, "batch pos ..."],
    mask: Int[Tensor, "batch pos"],
    score: Float[Tensor, " batch"],
    chunk: int,
) -> Tensor:
    """``[batch, pos]`` (or ``[batch, pos, head]``) drops of the objective from ``score``."""
    device = actual.device
    units = mask.bool()
    if actual.ndim == 4:  # one unit per (position, head)
        units = units[..., None].expand(*mask.shape, actual.shape[2])
    cells = units.nonzero()  # [row, 1 + unit axes]: (example, position[, head])
    examples = cells[:, 0]
    values = torch.zeros(units.shape, dtype=score.dtype, device=device)
    occluded = torch.empty(len(cells), dtype=score.dtype, device=device)

    def work(start: int, end: int) -> None:
        part = cells[start:end]
        rows = torch.arange(end - start, device=device)
        point = actual[part[:, 0]].clone()
        where = (rows, *part[:, 1:].unbind(-1))
        point[where] = baseline[tuple(part.unbind(-1))]
        occluded[start:end] = runner.scores(part[:, 0], point)

    over_chunks(len(cells), chunk, work, device)
    values[tuple(cells.unbind(-1))] = score.to(device)[examples] - occluded
    return values
