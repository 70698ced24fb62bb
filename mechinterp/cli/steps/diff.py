"""Step ``diff``: what the latents of an earlier ``sae`` step's SAE say about how two corpora
differ (``mechinterp.datasets``): latents ranked by the log-odds of firing in ``corpus_b``
over ``corpus_a`` with replication on held-out texts, optionally explained and scored, and
natural-language hypotheses checked on held-out texts against baselines.

Writes ``diff.csv`` (every latent's statistics), ``summary.json``, ``hypotheses.json`` (with
``hypotheses``), ``description.csv`` (with ``describe``: the latents over-represented in
``corpus_b``, their co-occurrence clusters and top contexts), ``report.html`` (offline) and the
figures.

Example config::

    - kind: diff
      sae: sae
      corpus_a: wordnet
      corpus_b: fortunes
      describe: 10
      hypotheses: ["is a joke, quotation or aphorism"]
"""

from __future__ import annotations

import json
from pathlib import Path

from mechinterp.cli.schema import DiffStep
from mechinterp.cli.steps.explain import chat_model, read_corpus
from mechinterp.cli.steps.output import StepOutput, table
from mechinterp.datasets import check_hypothesis, describe_corpus, diff_corpora, held_out
from mechinterp.explain import ExampleConfig
from mechinterp.plotting import corpus_diff_figure, hypothesis_figure, write_diff_report
from mechinterp.sae import load_sae


def run(step: DiffStep, context, out: Path) -> StepOutput:
    model = context.model
    sae = load_sae(context.step_dir(step.sae) / "sae", device=model.device)
    corpora = [read_corpus(source)[: step.max_texts] for source in (step.corpus_a, step.corpus_b)]
    labels = (step.corpus_a, step.corpus_b) if step.corpus_a != step.corpus_b else ("A", "B")
    cache = context.run_dir / "chat_cache"
    explainer = chat_model(step.explainer, context, cache) if step.explain or step.hypotheses else None
    scorer = chat_model(step.scorer, context, cache) if step.explain or step.hypotheses else None
    diff = diff_corpora(
        model,
        sae,
        *corpora,
        labels=labels,
        level=step.level,
        prior=step.prior,
        holdout=step.holdout,
        seed=step.seed,
        context_len=step.context_len,
        explain=step.explain,
        explainer=explainer,
        scorer=scorer,
        example_config=ExampleConfig(context_len=min(step.context_len, 32), max_contexts=400, seed=step.seed),
    )
    frame = diff.to_frame()
    frame.to_csv(out / "diff.csv", index=False)
    summary = {key: value for key, value in diff.summary().items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    figures = {"volcano": corpus_diff_figure(diff)}
    check = None
    if step.hypotheses:
        check = check_hypothesis(
            step.hypotheses,
            held_out(corpora[0], step.holdout, step.seed) or corpora[0],
            held_out(corpora[1], step.holdout, step.seed) or corpora[1],
            scorer,
            baselines=step.baselines,
            labels=labels,
            n_texts=step.n_texts,
            seed=step.seed,
        )
        check.save(out / "hypotheses.json")
        figures["hypotheses"] = hypothesis_figure(check)
        summary["hypothesis AUC margin over baselines"] = round(check.margin(), 4) + 0.0
    description = None
    if step.describe and not diff.top(step.describe, direction="b"):
        summary["description"] = f"no latent over-represented in {labels[1]} replicates; nothing to describe"
    elif step.describe:
        description = describe_corpus(
            model,
            sae,
            corpora[1],
            n_features=step.describe,
            min_similarity=step.min_similarity,
            context_len=step.context_len,
            diff=diff,
            seed=step.seed,
            progress=False,
        ).to_frame()
        description.to_csv(out / "description.csv", index=False)
        summary["description clusters"] = int(description["cluster"].nunique())
    write_diff_report(out / "report.html", diff=diff, hypothesis=check, n_features=step.top)
    columns = ["feature", "freq_a", "freq_b", "log_odds", "ci_low", "ci_high", "z", "holdout_z", "replicates"]
    columns += [c for c in ("explanation", "score", "shuffled_score") if c in frame]
    tables = [
        table(
            f"latents most over-represented in {labels[1]} (report.html has both ends)",
            frame[columns].head(step.top),
        )
    ]
    if check is not None:
        tables.append(table("hypotheses on held-out texts", check.to_frame()))
    if description is not None:
        tables.append(table(f"{labels[1]} described: over-represented latents by cluster", description))
    return StepOutput(summary=summary, figures=figures, tables=tables)
