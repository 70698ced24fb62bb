"""MIB's circuit metrics per method per task: CPR (higher is better) and CMD (lower is better).

    .venv/bin/python benchmarks/bench_mib.py [--model smollm2-135m] [--pairs 8] [--tasks ...]
        [--methods ...] [--skip edge-patching acdc acdc-exact] [--out runs/mib]

For every task of ``mechinterp.data.TASKS`` (IOI, arithmetic, multiple choice, greater-than,
induction; prompt pairs generated offline) it runs every method of ``circuits.ALGORITHMS``
(minus ``--skip``; a method added to the registry later joins the table by itself) through
``circuits.compare_methods``: discovery with the method's default config, then MIB's
faithfulness at 0.1 % ... 100 % of the edges, its area (CPR, edges ranked by sign) and its
area from 1 (CMD, edges ranked by magnitude). It prints and writes (``--out``) two markdown
tables (method x task), the full and empty circuits' metric per task (when they are close,
faithfulness divides by almost zero and the task's CPR / CMD mean little), all rows as CSV,
and one figure per task.

``--skip`` defaults to the methods that cost one masked forward row per edge or more on the
whole graph (exact edge patching: 70,651 rows on SmolLM2; ACDC, batched and exact: one forward
per destination and more): hours on a 2-core CPU. Name them in ``--methods`` to run them.

``--acdc-model toy-induction-2l`` instead compares exact and batched ACDC where both are
affordable: the 2-layer attention-only induction model on induction pairs, at several
thresholds (edges kept, faithfulness, CPR / CMD of each).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import mechinterp
from circuits import ALGORITHMS, ACDCConfig, ACDCExactConfig, Graph, compare_methods, evaluate_circuit
from mechinterp.data import TASKS
from mechinterp.plotting import mib_figure

COSTLY = ("edge-patching", "acdc", "acdc-exact")
# SmolLM2-135M cannot subtract reliably (clean and corrupt logit differences are both near 0),
# which leaves faithfulness without a denominator; the benchmark uses addition only. Multiple
# choice runs without answered example questions: with two, its 91-token prompts make EAP-IG's
# gradients of 5 steps x 8 pairs outgrow this machine's memory (and the model is at chance
# either way).
TASK_OPTIONS = {"arithmetic": {"operations": ("+",)}, "multiple-choice": {"shots": 0}}


def markdown(rows: list[dict], tasks: list[str], key: str) -> str:
    methods = list(dict.fromkeys(row["method"] for row in rows))
    cell = {(row["method"], row["task"]): row[key] for row in rows}
    lines = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for method in methods:
        values = [f"{cell[(method, t)]:.2f}" if (method, t) in cell else "-" for t in tasks]
        lines.append(f"| {method} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def method_table(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = mechinterp.load_model(args.model, device=args.device)
    graph = Graph.from_model(model)
    methods = args.methods or [name for name in ALGORITHMS if name not in args.skip]
    rows, baselines, tasks = [], [], []
    for task in args.tasks:
        pairs = TASKS[task](model, args.pairs, seed=args.seed, **TASK_OPTIONS.get(task, {}))
        start = time.perf_counter()
        configs = {
            "acdc": ACDCConfig(threshold=args.acdc_threshold),
            "acdc-exact": ACDCExactConfig(threshold=args.acdc_threshold),
        }
        table = compare_methods(
            model, pairs, pairs.metric(), graph, methods=methods, configs=configs, task=task
        )
        print(f"{task}: {time.perf_counter() - start:.0f} s")
        curve = table.scores[0].cmd_curve
        baselines.append(f"| {task} | {curve.full_model:.3f} | {curve.empty:.3f} |")
        rows += table.rows()
        tasks.append(task)
        mib_figure(table).write_html(out / f"{task}.html")
        write_tables(args, graph, rows, baselines, tasks)


def write_tables(args, graph, rows, baselines, tasks) -> None:
    out = Path(args.out)
    header = (
        f"{args.model}, {args.pairs} pairs per task (seed {args.seed}), {len(graph.edges)} edges, "
        f"methods at their default configs (ACDC threshold {args.acdc_threshold:g}), resample ablation"
    )
    text = "\n\n".join(
        [
            header,
            "CPR (area under faithfulness, edges ranked by sign; higher is better)",
            markdown(rows, tasks, "cpr"),
            "CMD (area under |1 - faithfulness|, edges ranked by magnitude; lower is better)",
            markdown(rows, tasks, "cmd"),
            "Task metric of the full model and of the empty circuit (every edge ablated)",
            "| task | full model | empty circuit |\n|---|---:|---:|\n" + "\n".join(baselines),
        ]
    )
    print(text)
    (out / "table.md").write_text(text + "\n")
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "rows.csv", index=False)


def acdc_comparison(args) -> None:
    """Exact vs batched ACDC on a model small enough for both."""
    model = mechinterp.load_model(args.acdc_model, device=args.device)
    graph = Graph.from_model(model)
    pairs = TASKS["induction"](model, args.pairs, seed=args.seed)
    metric = pairs.metric()
    lines = [
        f"{args.acdc_model}, induction, {args.pairs} pairs, {len(graph.edges)} edges",
        "| threshold | variant | edges kept | faithfulness | CPR | CMD | seconds |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for threshold in args.thresholds:
        configs = {
            "acdc": ACDCConfig(threshold=threshold),
            "acdc-exact": ACDCExactConfig(threshold=threshold),
        }
        table = compare_methods(
            model, pairs, metric, graph, methods=list(configs), configs=configs, progress=False
        )
        for score in table.scores:
            kept = evaluate_circuit(model, pairs.clean, pairs.corrupt, score.circuit, metric)
            lines.append(
                f"| {threshold:g} | {score.method} | {score.n_edges} | {kept.faithfulness:.3f} | "
                f"{score.cpr:.3f} | {score.cmd:.3f} | {score.seconds:.1f} |"
            )
    print("\n".join(lines))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "acdc.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--methods", nargs="+", default=None, help="default: every registered method but --skip"
    )
    parser.add_argument("--skip", nargs="*", default=list(COSTLY))
    parser.add_argument("--acdc-threshold", type=float, default=ACDCConfig().threshold)
    parser.add_argument(
        "--acdc-model", default=None, help="compare exact and batched ACDC on this model instead"
    )
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.05, 0.2, 0.5])
    parser.add_argument("--out", default="runs/mib")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.acdc_model:
        acdc_comparison(args)
    else:
        method_table(args)


if __name__ == "__main__":
    main()
