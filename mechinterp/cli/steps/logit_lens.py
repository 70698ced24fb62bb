"""Step ``logit_lens``: decode every layer's residual stream on a few prompts
(``mechinterp.lens.logit_lens``), one prompt at a time.

Writes ``lens_{i}.safetensors`` (KL to the final distribution, top-k tokens and
probabilities, target statistics) and ``lens_{i}.json`` (layer labels, tokens, decoded top
tokens) per prompt, a heatmap and a trajectory per prompt, and a table of where each
target becomes the top token.

Example config::

    - kind: logit_lens
      prompts: ["The Eiffel Tower is located in the city of"]
      targets: [" Paris"]
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from safetensors.torch import save_file

from mechinterp.cli.schema import LogitLensStep
from mechinterp.cli.steps.output import StepOutput, table
from mechinterp.lens import LensResult, logit_lens
from mechinterp.plotting import lens_heatmap, lens_trajectory


def save_lens(lens: LensResult, path: Path) -> None:
    """Tensors to ``path.safetensors``, labels and decoded tokens to ``path.json``."""
    tensors = {"kl_to_final": lens.kl_to_final, "top_tokens": lens.top_tokens, "top_probs": lens.top_probs}
    if lens.target_rank is not None:
        tensors |= {
            "target_logit": lens.target_logit,
            "target_prob": lens.target_prob,
            "target_rank": lens.target_rank,
        }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path.with_suffix(".safetensors")))
    labels = {"layers": lens.layers, "str_tokens": lens.str_tokens, "top_strings": lens.top_strings_table}
    path.with_suffix(".json").write_text(json.dumps(labels))


def first_top_layer(lens: LensResult) -> str | None:
    """The first layer label at which the target is the top token at the last position."""
    ranks = lens.target_rank[:, 0, -1].tolist()
    return next((label for label, rank in zip(lens.layers, ranks, strict=True) if rank == 0), None)


def run(step: LogitLensStep, context, out: Path) -> StepOutput:
    figures, rows = {}, []
    for i, prompt in enumerate(step.prompts):
        targets = [step.targets[i]] if step.targets else None
        lens = logit_lens(
            context.model, prompt, targets=targets, top_k=step.top_k, include_mid=step.include_mid
        )
        save_lens(lens, out / f"lens_{i}")
        value = "target_prob" if targets else "kl"
        figures[f"heatmap_{i}"] = lens_heatmap(lens, value=value)
        figures[f"trajectory_{i}"] = lens_trajectory(lens)
        row = {"prompt": prompt, "final top token": lens.top_strings_table[-1][0][-1][0]}
        if targets:
            row |= {
                "target": targets[0],
                "final rank": int(lens.target_rank[-1, 0, -1]),
                "first layer where top-1": first_top_layer(lens),
            }
        rows.append(row)
    frame = pd.DataFrame(rows)
    summary = {"prompts": len(rows), "final top token (prompt 0)": rows[0]["final top token"]}
    if step.targets:
        summary["target top-1 from (prompt 0)"] = rows[0]["first layer where top-1"]
    return StepOutput(summary=summary, figures=figures, tables=[table("logit lens per prompt", frame)])
