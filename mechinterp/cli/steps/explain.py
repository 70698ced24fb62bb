"""Step ``explain``: natural-language explanations of neurons, heads or the latents of an
earlier ``sae`` step's SAE, scored against shuffled explanations (``mechinterp.explain``).

Writes ``scores.json`` (scores, explanations, examples), ``dashboard.html`` (offline) and the
score figure; with ``check_scorer: true`` also ``scorer_check.json`` and its figure (the
scorer on planted units, correct against swapped explanations). Chat replies are cached in ``RUN_DIR/chat_cache`` so a rerun after a failure
asks again only what did not come back.

Example config::

    - kind: explain
      layer: 3
      indices: [0, 1, 2, 3]
      corpus: corpus.txt
      scorer: {base_url: "http://127.0.0.1:8000/v1", model: smollm2-135m}
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mechinterp
from mechinterp.cli.schema import CORPUS_NAMES, ChatEndpoint, ExplainStep
from mechinterp.cli.steps.output import StepOutput, table
from mechinterp.data.corpus import load_corpus
from mechinterp.explain import (
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
from mechinterp.plotting import explanation_scores, scorer_check, write_explanation_dashboard
from mechinterp.sae import load_sae

UNITS = {"neuron": Unit.neuron, "head_output": Unit.head_output, "head_attention": Unit.head_attention}


def chat_model(endpoint: ChatEndpoint, context, cache: Path):
    if endpoint.base_url is not None:
        return OpenAIChat(
            endpoint.base_url,
            endpoint.model,
            api_key_env=endpoint.api_key_env,
            cache_dir=cache,
            timeout=endpoint.timeout,
            concurrency=endpoint.concurrency,
        )
    if endpoint.model == context.config.model.name:
        return LocalChat(context.model, name=endpoint.model)
    return LocalChat(mechinterp.load_model(endpoint.model, device=context.model.device), name=endpoint.model)


def read_corpus(source: str) -> list[str]:
    """A named corpus's training split (``mechinterp.data.corpus``), or the documents of a
    text file, separated by blank lines."""
    if source in CORPUS_NAMES:
        return load_corpus(source, "train")
    text = Path(source).read_text(encoding="utf-8")
    return [doc.strip() for doc in text.split("\n\n") if doc.strip()]


def explained_units(step: ExplainStep, context) -> list[Unit]:
    """The step's units: neurons or heads of block ``layer``, or latents of an earlier sae step's SAE."""
    if step.unit != "sae_latent":
        return [UNITS[step.unit](step.layer, i) for i in step.indices]
    sae = load_sae(context.step_dir(step.sae) / "sae", device=context.model.device)
    too_large = [i for i in step.indices if i >= sae.cfg.d_sae]
    if too_large:
        raise ValueError(
            f"indices {too_large} are not latents of step {step.sae!r}'s SAE (d_sae={sae.cfg.d_sae})"
        )
    return [Unit.sae_latent(sae, i, label=f"{step.sae}/{i}") for i in step.indices]


def run(step: ExplainStep, context, out: Path) -> StepOutput:
    model = context.model
    units = explained_units(step, context)
    config = ExampleConfig(
        context_len=step.context_len, max_contexts=step.max_contexts, n_similar=step.n_similar
    )
    corpus = read_corpus(step.corpus)
    examples = collect_examples(model, units, corpus, config)
    cache = context.run_dir / "chat_cache"
    explained = explain_units(
        model, units, examples=examples, explainer=chat_model(step.explainer, context, cache)
    )
    scorer = chat_model(step.scorer, context, cache)
    scores = score_explanations(model, units, explained, scorer=scorer, method=step.methods)
    scores.save(out / "scores.json")
    figures = {"scores": explanation_scores(scores)}
    summary = {"units": len(units), "explained": sum(e.text is not None for e in explained.explanations)}
    check = None
    if step.check_scorer:
        try:  # the check's contexts are as long as the scored ones
            check = check_scorer(
                model, scorer, corpus, example_config=replace(CHECK_EXAMPLES, context_len=step.context_len)
            )
        except ValueError as error:  # the scores above stand; the check's failure is reported
            summary["scorer check"] = f"not run: {error}"
        else:
            check.save(out / "scorer_check.json")
            figures["scorer_check"] = scorer_check(check)
            summary["scorer check margin"] = round(check.margin(), 4) + 0.0  # no "-0"
            summary["scorer check passes"] = check.passes()
    write_explanation_dashboard(scores, out / "dashboard.html", check=check)
    frame = scores.to_frame()
    for method, row in scores.summary().iterrows():
        metric = "correlation" if method == "simulation" else "balanced_accuracy"
        summary[f"{method} {metric}"] = round(float(row[metric]), 4)
        summary[f"{method} shuffled"] = round(float(row[f"baseline_{metric}"]), 4)
    return StepOutput(
        summary=summary,
        figures=figures,
        tables=[table("explanations and scores (dashboard.html shows the contexts)", frame)],
    )
