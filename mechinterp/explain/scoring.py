"""Score explanations by how well a model predicts a unit's activations from them.

Three scorers (delphi, Paulo et al. 2024; OpenAI 2023), all on held-out contexts (the
quantile-sampled activating ones and the random non-activating ones; the explainer saw only
the top contexts):

- ``detection``: shown an unmarked excerpt and the explanation, is the unit active in it?
  Positives: activating excerpts; negatives: non-activating ones (random, and the similar hard
  negatives when ``ExampleConfig.n_similar`` asks for them). Balanced accuracy of the
  scorer's answer (P(Yes) > P(No)) and AUC of P(Yes).
- ``fuzzing``: shown an activating excerpt with some tokens marked, are the marked tokens
  what the explanation describes? Positives: the active tokens marked; negatives: the same
  number of inactive tokens of the same excerpt marked. Balanced accuracy and AUC.
- ``simulation``: for each token, the scorer's probabilities over ratings 0-10 give an
  expected rating; its Pearson correlation with the real activations over all tokens of
  ``simulation_contexts`` excerpts (half activating, half not) is the score. A constant
  prediction (the same expected rating for every token, as from an explanation that never
  matches) carries no information about the activations and counts as correlation 0, not
  NaN, so the margin over the shuffled baseline stays defined when the baseline is flat.

Every score sits next to the same scorer given a **shuffled** explanation (another unit's,
a derangement): an explanation that carries information about its unit beats that baseline.
A request that fails is counted per unit (``n_failed``, ``error``); scores are computed from
the answers that came back, and a unit is only left without a score if too few did.

Example:
    >>> scores = score_explanations(model, units, explained, scorer=LocalChat(model), method="detection")
    >>> scores.to_frame()[["label", "balanced_accuracy", "baseline_balanced_accuracy"]]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from mechinterp.explain.chat import ChatError, ChatModel
from mechinterp.explain.examples import Context, ExampleConfig, UnitExamples, examples_for
from mechinterp.explain.explainers import ExplainedUnits, Explanation, default_explainer
from mechinterp.explain.prompts import (
    SCALE,
    YES_NO,
    detection_prompt,
    fuzzing_prompt,
    simulation_prompt,
)
from mechinterp.explain.units import Unit
from mechinterp.probing import roc_auc

Method = Literal["detection", "fuzzing", "simulation"]
METHODS: tuple[Method, ...] = ("detection", "fuzzing", "simulation")
METRICS = {
    "detection": ("balanced_accuracy", "auc"),
    "fuzzing": ("balanced_accuracy", "auc"),
    "simulation": ("correlation",),
}


@dataclass(frozen=True, kw_only=True)
class ExplanationScores:
    """One row per (unit, method): the explanation, its scores, the shuffled baseline's."""

    rows: tuple[dict, ...]
    explanations: tuple[Explanation, ...]
    examples: tuple[UnitExamples, ...]
    scorer: str
    explainer: str | None = None

    def to_frame(self) -> pd.DataFrame:
        """Columns: label, method, explanation, shuffled, each metric and ``baseline_<metric>``,
        n_items, n_failed, error."""
        return pd.DataFrame(list(self.rows))

    def summary(self) -> pd.DataFrame:
        """Mean of every metric and its baseline per method (units with a score)."""
        frame = self.to_frame()
        numeric = frame.select_dtypes("number").drop(columns=["n_items", "n_failed"], errors="ignore")
        return numeric.groupby(frame["method"]).mean()

    def to_dict(self) -> dict:
        return {
            "scorer": self.scorer,
            "explainer": self.explainer,
            "rows": [{k: _json_value(v) for k, v in row.items()} for row in self.rows],
            "explanations": [e.to_dict() for e in self.explanations],
            "examples": [e.to_dict() for e in self.examples],
        }

    def save(self, path: str | Path) -> Path:
        """Write JSON (scores, explanations and the examples behind them)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def _json_value(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def score_explanations(
    model,
    units: Sequence[Unit],
    explanations: ExplainedUnits | Mapping[str, str | None] | Sequence[str | None],
    corpus: Iterable[str] | None = None,
    scorer: ChatModel | None = None,
    method: Method | Sequence[Method] = METHODS,
    *,
    examples: Sequence[UnitExamples] | None = None,
    example_config: ExampleConfig | None = None,
    simulation_contexts: int = 4,
    seed: int = 0,
) -> ExplanationScores:
    """Score each unit's explanation and a shuffled one with ``scorer`` (default: SmolLM2-135M).

    ``explanations``: ``explain_units`` output (its examples are reused), a mapping from unit
    label to text, or one text per unit (``None``: no explanation).
    """
    methods = (method,) if isinstance(method, str) else tuple(method)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown scoring method {m!r}; choose from {METHODS}")
    explained = _as_explanations(units, explanations)
    if examples is None and isinstance(explanations, ExplainedUnits):
        examples = explanations.examples
    examples = examples_for(model, units, corpus, examples, example_config)
    scorer = scorer or default_explainer()
    shuffled = _shuffled([e.text for e in explained], seed)
    rows = []
    for m in methods:
        pairs = [
            (u, which, text)
            for u, explanation in enumerate(explained)
            if explanation.text is not None
            for which, text in (("explanation", explanation.text), ("baseline", shuffled[u]))
            if text is not None
        ]
        metrics = score_texts(
            examples,
            [(u, text) for u, _, text in pairs],
            scorer,
            m,
            seed=seed,
            simulation_contexts=simulation_contexts,
        )
        results = {(u, which): found for (u, which, _), found in zip(pairs, metrics, strict=True)}
        for u, (unit_examples, explanation) in enumerate(zip(examples, explained, strict=True)):
            row = {
                "label": unit_examples.label,
                "method": m,
                "explanation": explanation.text,
                "shuffled": shuffled[u],
            }
            own = results.get((u, "explanation"))
            base = results.get((u, "baseline"), {})
            for metric in METRICS[m]:
                row[metric] = own[metric] if own else float("nan")
                row[f"baseline_{metric}"] = base.get(metric, float("nan"))
            row["n_items"] = (own["n_items"] if own else 0) + base.get("n_items", 0)
            row["n_failed"] = (own["n_failed"] if own else 0) + base.get("n_failed", 0)
            errors = [r["error"] for r in (own or {}, base) if r.get("error")]
            if explanation.text is None:
                errors.insert(0, f"no explanation: {explanation.error}")
            elif shuffled[u] is None:
                errors.append("no shuffled baseline: it needs at least two explained units")
            row["error"] = "; ".join(errors) or None
            rows.append(row)
    return ExplanationScores(
        rows=tuple(rows),
        explanations=tuple(explained),
        examples=tuple(examples),
        scorer=scorer.name,
        explainer=explanations.explainer if isinstance(explanations, ExplainedUnits) else None,
    )


def score_texts(
    examples: Sequence[UnitExamples],
    pairs: Sequence[tuple[int, str]],
    scorer: ChatModel,
    method: Method,
    *,
    seed: int = 0,
    simulation_contexts: int = 4,
) -> list[dict]:
    """The metrics of ``method`` for each ``(unit index, explanation text)`` pair, in one
    batched call to ``scorer``. Every text given for the same unit is scored on the same
    held-out items (the same contexts and, for fuzzing, the same wrongly marked tokens), so
    two explanations of a unit are compared on equal terms.

    Each result holds the method's metrics, ``n_items``, ``n_failed`` and, when something
    went wrong, ``error``.
    """
    rng = np.random.default_rng(seed)
    items = {}
    for u in dict.fromkeys(u for u, _ in pairs):
        items[u] = _ITEMS[method](examples[u], rng, simulation_contexts)
    conversations, owners = [], []
    for j, (u, text) in enumerate(pairs):
        for make in items[u][0]:
            conversations.append(make(text))
            owners.append(j)
    choices = SCALE if method == "simulation" else YES_NO
    answers = scorer.choice_probs(conversations, choices) if conversations else []
    per_pair: list[list] = [[] for _ in pairs]
    for j, answer in zip(owners, answers, strict=True):
        per_pair[j].append(answer)
    return [_metrics(method, per_pair[j], items[u][1]) for j, (u, _) in enumerate(pairs)]


def _as_explanations(units, explanations) -> list[Explanation]:
    if isinstance(explanations, ExplainedUnits):
        found = list(explanations.explanations)
    elif isinstance(explanations, Mapping):
        missing = [u.label for u in units if u.label not in explanations]
        if missing:
            raise ValueError(f"no explanation given for units {missing}; known labels: {list(explanations)}")
        found = [Explanation(label=u.label, text=explanations[u.label]) for u in units]
    else:
        found = [Explanation(label=u.label, text=t) for u, t in zip(units, explanations, strict=True)]
    if len(found) != len(units):
        raise ValueError(f"{len(found)} explanations for {len(units)} units")
    return [
        e if e.text is not None else Explanation(label=e.label, text=None, error=e.error or "none given")
        for e in found
    ]


def _shuffled(texts: list[str | None], seed: int) -> list[str | None]:
    """Each explained unit gets another explained unit's text (a random derangement)."""
    have = [i for i, t in enumerate(texts) if t is not None]
    out: list[str | None] = [None] * len(texts)
    if len(have) < 2:
        return out
    order = np.random.default_rng(seed).permutation(have)
    for k, i in enumerate(order):
        out[int(i)] = texts[int(order[(k + 1) % len(order)])]
    return out


# ---------------------------------------------------------------------------------------- items


def _detection_items(examples: UnitExamples, rng, _n) -> tuple[list, list[int]]:
    negatives = (*examples.random, *examples.similar)
    contexts = [(c, 1) for c in examples.quantile] + [(c, 0) for c in negatives]
    return [partial(detection_prompt, context=c) for c, _ in contexts], [y for _, y in contexts]


def _fuzzing_items(examples: UnitExamples, rng, _n) -> tuple[list, list[int]]:
    prompts, labels = [], []
    for context in examples.quantile:
        active = np.array(context.active)
        quiet = np.flatnonzero(~active)
        if len(quiet) < active.sum():
            continue
        wrong = np.zeros_like(active)
        wrong[rng.choice(quiet, size=int(active.sum()), replace=False)] = True
        for marks, label in ((active, 1), (wrong, 0)):
            prompts.append(partial(fuzzing_prompt, context=context, marks=tuple(marks.tolist())))
            labels.append(label)
    return prompts, labels


def _simulation_items(examples: UnitExamples, rng, n_contexts: int) -> tuple[list, list[float]]:
    half = max(1, n_contexts // 2)
    contexts: list[Context] = [*examples.quantile[-half:], *examples.random[:half]]
    prompts, targets = [], []
    for context in contexts:
        for position, activation in enumerate(context.activations):
            prompts.append(partial(simulation_prompt, context=context, position=position))
            targets.append(activation)
    return prompts, targets


_ITEMS = {"detection": _detection_items, "fuzzing": _fuzzing_items, "simulation": _simulation_items}


def _correlation(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Pearson correlation; 0 for a constant prediction, NaN when there is nothing to
    correlate (fewer than three items, or activations that never vary).

    Example:
        >>> _correlation(np.full(4, 3.0), np.array([0.0, 1.0, 0.0, 2.0]))
        0.0
    """
    if len(actual) <= 2 or actual.std() == 0:
        return float("nan")
    if predicted.std() == 0:
        return 0.0
    return float(np.corrcoef(predicted, actual)[0, 1])


def _metrics(method: str, answers: list, truth: list) -> dict:
    failed = [a for a in answers if isinstance(a, ChatError)]
    keep = [i for i, a in enumerate(answers) if not isinstance(a, ChatError)]
    out = {"n_items": len(answers), "n_failed": len(failed)}
    if failed:
        out["error"] = f"{len(failed)} of {len(answers)} scorer requests failed, first: {failed[0]}"
    if not answers:
        out["error"] = f"no held-out contexts to score {method} on"
    y = np.array([truth[i] for i in keep], dtype=float)
    if method == "simulation":
        predicted = np.array([float(np.dot(answers[i], np.arange(len(SCALE)))) for i in keep])
        out["correlation"] = _correlation(predicted, y)
        return out
    p_yes = np.array([float(answers[i][0]) for i in keep])
    positive = y == 1
    if positive.sum() == 0 or (~positive).sum() == 0:
        out.setdefault("error", "needs held-out contexts of both classes (activating and not)")
        out["balanced_accuracy"] = out["auc"] = float("nan")
        return out
    said_yes = p_yes > 0.5
    out["balanced_accuracy"] = float((said_yes[positive].mean() + (~said_yes[~positive]).mean()) / 2)
    out["auc"] = roc_auc(torch.from_numpy(p_yes), torch.from_numpy(positive))
    return out
