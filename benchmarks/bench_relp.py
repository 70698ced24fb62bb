"""RelP vs AtP vs AtP* against exact activation patching, on SmolLM2-135M.

    .venv/bin/python benchmarks/bench_relp.py [--task ioi] [--n 8] [--seed 0] [--device cpu]

For one task's prompt pairs, every site family below is patched exactly (``patch_sweep``,
the sweeps' default direction) and estimated by AtP, AtP*, RelP (its default rules: LN,
identity, half) and RelP with the AH rule too (``attribution_patch``; ``--methods`` picks
some); the table gives the Pearson correlation of the example-mean effects over the cells,
and Spearman in brackets:

- ``mlp_out`` per layer and position (the paper's headline: MLP outputs);
- ``mlp_out`` per layer (all positions at once);
- ``z`` per head (all positions): attention heads;
- ``resid_pre`` per layer and position.

``--ablate`` instead compares RelP with subsets of its rules (``relevance_rules(model,
rules)`` around AtP) on MLP outputs (layer x position) and heads: which rule helps where.

Tasks: ``ioi`` (``mechinterp.data.ioi_pairs``); any name in ``mechinterp.data.TASKS`` (a
mapping ``name -> generator(model, n, *, seed) -> PromptPairs``), once it exists, is
picked up too. Compare the correlations, not the seconds (2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import time

import mechinterp
import mechinterp.data
from mechinterp.data import ioi_pairs
from mechinterp.patching import SweepSpec, attribution_patch, compare, patch_sweep, relevance_rules
from mechinterp.patching.relevance import RULES

SITES = {
    "MLP out (layer x position)": SweepSpec(kind="mlp_out"),
    "MLP out (layer)": SweepSpec(kind="mlp_out", per_position=False),
    "heads z (layer x head)": SweepSpec(kind="z", per_position=False),
    "resid_pre (layer x position)": SweepSpec(kind="resid_pre"),
}
SITE_NAMES = dict(zip(("mlp", "mlp-layer", "heads", "resid"), SITES, strict=True))
METHODS = {  # column label -> attribution_patch arguments
    "AtP": dict(method="atp"),
    "AtP*": dict(method="atp*"),
    "RelP": dict(method="relp"),
    "RelP + AH": dict(method="relp", relp_rules=RULES),
}
METHOD_NAMES = dict(zip(("atp", "atp*", "relp", "relp+ah"), METHODS, strict=True))
RULE_SUBSETS = {
    "AtP (no rules)": (),
    "LN": ("ln",),
    "AH": ("ah",),
    "identity": ("identity",),
    "half": ("half",),
    "identity + half": ("identity", "half"),
    "LN + AH": ("ln", "ah"),
    "LN + identity + half (RelP)": ("ln", "identity", "half"),
    "all four (RelP + AH)": RULES,
}


def tasks() -> dict:
    """Task name -> prompt-pair generator: IOI plus whatever ``mechinterp.data.TASKS`` holds."""
    return {"ioi": ioi_pairs, **dict(getattr(mechinterp.data, "TASKS", {}))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ioi", help="a task name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the task names and exit")
    parser.add_argument("--n", type=int, default=8, help="prompt pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ablate", action="store_true", help="compare subsets of RelP's rules")
    parser.add_argument(
        "--sites", default="mlp,mlp-layer,heads,resid", help=f"some of {','.join(SITE_NAMES)}"
    )
    parser.add_argument("--methods", default=",".join(METHOD_NAMES), help=f"some of {','.join(METHOD_NAMES)}")
    args = parser.parse_args()
    available = tasks()
    if args.list:
        print("\n".join(available))
        return
    if args.task not in available:
        raise SystemExit(f"unknown task {args.task!r}; choose from {', '.join(available)}")
    model = mechinterp.load_model(args.model, device=args.device)
    pairs = available[args.task](model, args.n, seed=args.seed)
    metric = pairs.metric()
    run = dict(attention_mask=pairs.attention_mask)
    print(f"{args.model}, task {args.task}, {len(pairs)} pairs of {pairs.clean.shape[1]} tokens")
    if args.ablate:
        ablate(model, pairs, metric, run)
        return
    methods = [METHOD_NAMES[name] for name in args.methods.split(",")]
    print(f"| sites | cells | {' | '.join(methods)} |")
    print("|---|---|" + "---|" * len(methods))
    for label in (SITE_NAMES[name] for name in args.sites.split(",")):
        spec = SITES[label]
        start = time.perf_counter()
        exact = patch_sweep(model, pairs.clean, pairs.corrupt, spec, metric, **run)
        timings = {"exact": time.perf_counter() - start}
        cells = []
        for method in methods:
            start = time.perf_counter()
            estimate = attribution_patch(
                model, pairs.clean, pairs.corrupt, metric, spec, **METHODS[method], **run
            )
            timings[method] = time.perf_counter() - start
            comparison = compare(exact, estimate)
            cells.append(f"{comparison.pearson:.3f} ({comparison.spearman:.3f})")
        n_cells = exact.values[..., 0].numel()
        print(f"| {label} | {n_cells} | {' | '.join(cells)} |")
        print("    seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), flush=True)


def ablate(model, pairs, metric, run: dict) -> None:
    specs = {k: SITES[k] for k in ("MLP out (layer x position)", "heads z (layer x head)")}
    exact = {
        k: patch_sweep(model, pairs.clean, pairs.corrupt, spec, metric, **run) for k, spec in specs.items()
    }
    print(f"| rules | {' | '.join(specs)} |")
    print("|---|" + "---|" * len(specs))
    for label, rules in RULE_SUBSETS.items():
        cells = []
        for key, spec in specs.items():
            with relevance_rules(model, rules):  # AtP inside the rules is RelP with those rules
                estimate = attribution_patch(model, pairs.clean, pairs.corrupt, metric, spec, **run)
            comparison = compare(exact[key], estimate)
            cells.append(f"{comparison.pearson:.3f} ({comparison.spearman:.3f})")
        print(f"| {label} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
