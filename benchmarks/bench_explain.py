"""Real checks of mechinterp.explain on SmolLM2-135M-Instruct (the default explainer and scorer).

    .venv/bin/python benchmarks/bench_explain.py [--contexts 2000] [--neurons 20] [--layer 5]
        [--methods detection fuzzing] [--http] [--corpus FILE] [--out bench_explain.json]

1. ``check_scorer``: planted units whose trigger is known by construction (directions fitted
   on the token embedding that fire on digits, capitalised words and closing brackets),
   scored by detection with every unit's explanation on 30 activating and 30 non-activating
   held-out contexts each. Prints how often their active tokens really are of the class, the
   balanced accuracy and AUC matrices, and the margin of the correct explanations over the
   swapped ones (bar: +0.1). With ``--http`` the same check also runs through
   ``mechinterp serve``'s server (in this process) and the ``openai`` client. The default
   explainer's own explanations of the planted units are printed too.
2. ``--neurons`` random MLP neurons of block ``--layer``: explained by the default explainer,
   scored against shuffled explanations (20 activating and 20 non-activating held-out
   contexts per neuron).

The corpus is a text file of documents separated by blank lines (``--corpus``); without one
it is the project's offline English corpus (``mechinterp.data.corpus``, training split).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

import mechinterp
from mechinterp.data.corpus import load_corpus
from mechinterp.explain import (
    ChatServer,
    ExampleConfig,
    LocalChat,
    OpenAIChat,
    Unit,
    check_scorer,
    collect_examples,
    explain_units,
    score_explanations,
)
from mechinterp.explain.scorer_check import CHECK_EXAMPLES


def planted_check(model, corpus, args, scorers) -> dict:
    config = CHECK_EXAMPLES if args.contexts is None else replace(CHECK_EXAMPLES, max_contexts=args.contexts)
    results = {}
    examples = None
    for name, scorer in scorers.items():
        started = time.perf_counter()
        check = check_scorer(model, scorer, corpus, example_config=config)
        examples = check.examples
        print(
            f"\n[{name}, {time.perf_counter() - started:.0f} s, held-out contexts per unit: {check.n_items}]"
        )
        print(check)
        results[name] = check.to_dict()
    explained = explain_units(
        model, [e.unit for e in examples], examples=examples, explainer=scorers["local"]
    )
    print("\nthe default explainer on the planted units:")
    for explanation in explained.explanations:
        print(f"  {explanation.label:34s} -> {explanation.text!r} {explanation.error or ''}")
    results["explanations"] = explained.texts()
    return results


def neuron_check(model, corpus, args, chat) -> dict:
    generator = torch.Generator().manual_seed(0)
    indices = torch.randperm(model.architecture.d_mlp, generator=generator)[: args.neurons].tolist()
    units = [Unit.neuron(args.layer, i) for i in indices]
    started = time.perf_counter()
    config = ExampleConfig(
        context_len=32, n_quantiles=5, n_per_quantile=4, n_random=20, max_contexts=args.contexts or 2000
    )
    examples = collect_examples(model, units, corpus, config)
    explained = explain_units(model, units, examples=examples, explainer=chat)
    scores = score_explanations(model, units, explained, scorer=chat, method=args.methods)
    frame = scores.to_frame()
    print(f"\n{len(units)} neurons of block {args.layer} ({time.perf_counter() - started:.0f} s)")
    columns = [
        "label",
        "method",
        "explanation",
        "balanced_accuracy",
        "baseline_balanced_accuracy",
        "auc",
        "baseline_auc",
    ]
    columns += [c for c in ("correlation", "baseline_correlation") if c in frame]
    with pd.option_context("display.width", 200, "display.max_colwidth", 50):
        print(frame[[c for c in columns if c in frame]].round(3).to_string())
        print(scores.summary().round(3).to_string())
    failed = [e for e in explained.explanations if e.text is None]
    print(f"{len(failed)} of {len(units)} neurons got no explanation:")
    for explanation in failed:
        print(f"  {explanation.label}: {explanation.error[:120]}")
    out = {"summary": scores.summary().to_dict(), "rows": scores.to_dict()["rows"]}
    for method in args.methods:
        metric = "correlation" if method == "simulation" else "balanced_accuracy"
        rows = frame[frame["method"] == method]
        diff = (rows[metric] - rows[f"baseline_{metric}"]).dropna().round(9)  # ties are ties
        unexplained = rows["explanation"].isna().sum()
        print(
            f"{method}: {unexplained} of {len(rows)} units without an explanation; of {len(diff)} scored, the "
            f"explanation beats its shuffled baseline on {(diff > 0).sum()}, ties on {(diff == 0).sum()}, loses "
            f"on {(diff < 0).sum()}; mean {metric} difference {diff.mean():+.3f} "
            f"(std error {diff.std() / max(len(diff), 1) ** 0.5:.3f})"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", type=int, help="corpus windows to read (default 2000)")
    parser.add_argument("--neurons", type=int, default=20)
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["detection", "fuzzing"],
        choices=["detection", "fuzzing", "simulation"],
    )
    parser.add_argument("--http", action="store_true", help="also score the planted units through the server")
    parser.add_argument("--corpus", type=Path, help="text file, documents separated by blank lines")
    parser.add_argument("--skip", nargs="*", default=[], choices=["planted", "neurons"])
    parser.add_argument("--out", type=Path, default=Path("bench_explain.json"))
    args = parser.parse_args()
    model = mechinterp.load_model("smollm2-135m")
    corpus = (
        [d.strip() for d in args.corpus.read_text().split("\n\n") if d.strip()]
        if args.corpus
        else load_corpus("default", "train")
    )
    print(f"corpus: {len(corpus)} documents; model {model}")
    chat = LocalChat(model, name="smollm2-135m")
    results = {"args": {k: str(v) for k, v in vars(args).items()}}
    if "planted" not in args.skip:
        if args.http:
            with ChatServer(LocalChat(model, name="smollm2-135m"), port=0) as server:
                remote = OpenAIChat(server.url, "smollm2-135m", concurrency=2)
                results["planted"] = planted_check(model, corpus, args, {"local": chat, "http": remote})
        else:
            results["planted"] = planted_check(model, corpus, args, {"local": chat})
    if "neurons" not in args.skip:
        results["neurons"] = neuron_check(model, corpus, args, chat)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
