"""Step ``explain``: natural-language explanations of neurons or heads, scored against
shuffled explanations (``mechinterp.explain``).

Writes ``scores.json`` (scores, explanations, examples), ``dashboard.html`` (offline) and the
score figure. Chat replies are cached in ``RUN_DIR/chat_cache`` so a rerun after a failure
asks again only what did not come back.

Example config::

    - kind: explain
      layer: 3
      indices: [0, 1, 2, 3]
      corpus: corpus.txt
      scorer: {base_url: "http://127.0.0.1:8000/v1", model: smollm2-135m}
"""

from __future__ import annotations

from pathlib import Path

import mechinterp
from mechinterp.cli.config import CORPUS_NAMES, ChatEndpoint, ExplainStep
from mechinterp.cli.steps.output import StepOutput, table
from mechinterp.data.corpus import load_corpus
from mechinterp.explain import (
    ExampleConfig,
    LocalChat,
    OpenAIChat,
    Unit,
    collect_examples,
    explain_units,
    score_explanations,
)
from mechinterp.plotting import explanation_scores, write_explanation_dashboard

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


def run(step: ExplainStep, context, out: Path) -> StepOutput:
    model = context.model
    units = [UNITS[step.unit](step.layer, i) for i in step.indices]
    config = ExampleConfig(context_len=step.context_len, max_contexts=step.max_contexts)
    examples = collect_examples(model, units, read_corpus(step.corpus), config)
    cache = context.run_dir / "chat_cache"
    explained = explain_units(
        model, units, examples=examples, explainer=chat_model(step.explainer, context, cache)
    )
    scores = score_explanations(
        model, units, explained, scorer=chat_model(step.scorer, context, cache), method=step.methods
    )
    scores.save(out / "scores.json")
    write_explanation_dashboard(scores, out / "dashboard.html")
    frame = scores.to_frame()
    summary = {"units": len(units), "explained": sum(e.text is not None for e in explained.explanations)}
    for method, row in scores.summary().iterrows():
        metric = "correlation" if method == "simulation" else "balanced_accuracy"
        summary[f"{method} {metric}"] = round(float(row[metric]), 4)
        summary[f"{method} shuffled"] = round(float(row[f"baseline_{metric}"]), 4)
    return StepOutput(
        summary=summary,
        figures={"scores": explanation_scores(scores)},
        tables=[table("explanations and scores (dashboard.html shows the contexts)", frame)],
    )
