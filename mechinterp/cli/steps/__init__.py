"""One module per step kind; ``STEPS`` maps a config's ``kind`` to its ``run(step, context,
out_dir) -> StepOutput`` function. Steps use only the public API of mechinterp and circuits."""

from collections.abc import Callable

from mechinterp.cli.steps import (
    attribution,
    attribution_graph,
    circuit,
    diff,
    explain,
    export,
    logit_lens,
    patching,
    probe,
    sae,
    token_attribution,
)
from mechinterp.cli.steps.output import StepOutput, table

STEPS: dict[str, Callable[..., StepOutput]] = {
    "patching": patching.run,
    "attribution": attribution.run,
    "circuit": circuit.run,
    "logit_lens": logit_lens.run,
    "probe": probe.run,
    "export": export.run,
    "explain": explain.run,
    "token_attribution": token_attribution.run,
    "sae": sae.run,
    "attribution_graph": attribution_graph.run,
    "diff": diff.run,
}

__all__ = ["STEPS", "StepOutput", "table"]
