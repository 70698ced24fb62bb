"""Real checks of mechinterp.explain on SmolLM2-135M-Instruct (the default explainer and scorer).

    .venv/bin/python benchmarks/bench_explain.py [--contexts 1000] [--neurons 20] [--layer 5]
        [--methods detection fuzzing] [--http] [--corpus FILE] [--out bench_explain.json]

1. Planted units whose trigger is known by construction: directions fitted on the token
   embedding (``mechinterp.explain.planted``) that fire on digits, capitalised words and
   closing brackets. Reports how often their active corpus tokens really are of the class,
   then the scorer's detection balanced accuracy and AUC for every (unit, explanation)
   pair: the correct explanation should beat the swapped ones by >= 0.1 balanced accuracy
   on average. With ``--http`` the same scoring also runs through ``mechinterp serve``'s
   server (in this process) and the ``openai`` client, and both tables are printed.
   The default explainer's own explanations of the planted units are printed too.
2. ``--neurons`` random MLP neurons of block ``--layer``: explained by the default explainer,
   scored against shuffled explanations.

The corpus is a text file of documents separated by blank lines (``--corpus``); without one
it is the project's offline English corpus (``mechinterp.data.corpus``, training split).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import mechinterp
from mechinterp.data.corpus import load_corpus
from mechinterp.explain import (
    ChatServer,
    LocalChat,
    OpenAIChat,
    Unit,
    collect_examples,
    explain_units,
    score_explanations,
)
from mechinterp.explain.planted import token_class_unit

PLANTED = {
    "digits and numbers": lambda s: bool(re.fullmatch(r"\s*\d+", s)),
    "capitalised words and names": lambda s: bool(re.fullmatch(r" ?[A-Z][a-z]+", s)),
    "closing brackets and parentheses": lambda s: any(c in s for c in ")]}") and not re.search(r"\w", s),
}


def planted_check(model, corpus, args, scorers) -> dict:
    units = [token_class_unit(model, label, rule) for label, rule in PLANTED.items()]
    examples = collect_examples(model, units, corpus, max_contexts=args.contexts, context_len=32)
    purity = {}
    for unit_examples, rule in zip(examples, PLANTED.values(), strict=True):
        tokens = [
            t
            for c in (*unit_examples.top, *unit_examples.quantile)
            for t, on in zip(c.tokens, c.active, strict=True)
            if on
        ]
        purity[unit_examples.label] = float(np.mean([rule(t) for t in tokens]))
    print("\nplanted units: fraction of their active tokens (top + quantile contexts) in the class")
    for label, value in purity.items():
        print(f"  {label:34s} {value:.3f}")
    labels = list(PLANTED)
    results = {"purity": purity}
    for name, scorer in scorers.items():
        matrix = {m: np.full((len(labels), len(labels)), np.nan) for m in ("balanced_accuracy", "auc")}
        for shift in range(len(labels)):
            given = {labels[u]: labels[(u + shift) % len(labels)] for u in range(len(labels))}
            scores = score_explanations(
                model, units, given, scorer=scorer, method="detection", examples=examples
            ).to_frame()
            for u in range(len(labels)):
                for metric in matrix:
                    matrix[metric][u, (u + shift) % len(labels)] = scores.loc[u, metric]
        correct = np.diag(matrix["balanced_accuracy"]).mean()
        swapped = matrix["balanced_accuracy"][~np.eye(len(labels), dtype=bool)].mean()
        print(f"\ndetection balanced accuracy, scorer {name} (rows: unit, columns: explanation)")
        print(pd.DataFrame(matrix["balanced_accuracy"], index=labels, columns=labels).round(3).to_string())
        print(f"AUC:\n{pd.DataFrame(matrix['auc'], index=labels, columns=labels).round(3).to_string()}")
        print(
            f"correct {correct:.3f} vs swapped {swapped:.3f}: margin {correct - swapped:+.3f} (bar: >= +0.100)"
        )
        results[name] = {
            "balanced_accuracy": matrix["balanced_accuracy"].tolist(),
            "auc": matrix["auc"].tolist(),
            "margin": float(correct - swapped),
        }
    explained = explain_units(model, units, examples=examples, explainer=scorers["local"])
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
    examples = collect_examples(model, units, corpus, max_contexts=args.contexts, context_len=32)
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
    out = {"summary": scores.summary().to_dict(), "rows": scores.to_dict()["rows"]}
    for method in args.methods:
        metric = "correlation" if method == "simulation" else "balanced_accuracy"
        rows = frame[frame["method"] == method]
        diff = (rows[metric] - rows[f"baseline_{metric}"]).dropna()
        print(
            f"{method}: explanation beats its shuffled baseline on {(diff > 0).sum()} of {len(diff)} units, "
            f"mean {metric} difference {diff.mean():+.3f} (std error {diff.std() / max(len(diff), 1) ** 0.5:.3f})"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", type=int, default=1000, help="corpus windows to read")
    parser.add_argument("--neurons", type=int, default=20)
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument(
        "--methods", nargs="+", default=["detection"], choices=["detection", "fuzzing", "simulation"]
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
