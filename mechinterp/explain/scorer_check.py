"""Is a scorer measuring anything? Score planted units with their own and each other's explanations.

A planted unit fires on a token class known by construction (``planted.TOKEN_CLASSES``:
digits, capitalised words, closing brackets; ``token_class_unit`` fits each from the token
embedding), so its correct explanation is known in advance. ``check_scorer`` collects their
examples once, scores every (unit, explanation) pair on the same held-out contexts, and
reports the matrices and the **margin**: the mean score of the correct explanations minus the
mean of the swapped ones. A scorer that reads explanations gives a clearly positive margin
(the bar we use is +0.1 balanced accuracy); one that answers from the excerpt alone gives about
zero, and then its scores of real explanations mean nothing either.

Run it once per scorer (a local model or an endpoint) before trusting ``score_explanations``.

Example:
    >>> check = check_scorer(model, scorer=OpenAIChat(url, "llama-3.1-8b-instruct"))
    >>> print(check)                       # matrices, margin, passes or not
    >>> check.passes()                     # margin >= 0.1
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mechinterp.explain.chat import ChatModel
from mechinterp.explain.examples import ExampleConfig, UnitExamples, examples_for
from mechinterp.explain.explainers import default_explainer
from mechinterp.explain.planted import TOKEN_CLASSES, TokenPredicate, token_class_unit
from mechinterp.explain.scoring import METRICS, Method, score_texts

CHECK_EXAMPLES = ExampleConfig(
    context_len=32, n_quantiles=5, n_per_quantile=6, n_random=30, max_contexts=2000
)
"""Default examples per planted unit: 30 activating and 30 non-activating held-out contexts."""


@dataclass(frozen=True, kw_only=True)
class ScorerCheck:
    """Scores of every (planted unit, explanation) pair; the diagonal holds the correct ones.

    ``scores[metric]`` is ``[unit, explanation]``; ``purity`` is, per unit, the fraction of its
    active tokens (top and held-out contexts) that belong to its class.
    """

    labels: tuple[str, ...]
    method: str
    scorer: str
    scores: Mapping[str, np.ndarray]
    purity: Mapping[str, float]
    n_items: tuple[int, ...]
    examples: tuple[UnitExamples, ...]

    def margin(self, metric: str | None = None) -> float:
        """Mean score of the correct explanations minus the mean of the swapped ones."""
        matrix = self.scores[metric or METRICS[self.method][0]]
        swapped = ~np.eye(len(self.labels), dtype=bool)
        return float(np.nanmean(np.diag(matrix)) - np.nanmean(matrix[swapped]))

    def passes(self, bar: float = 0.1) -> bool:
        """Whether the correct explanations out-score the swapped ones by at least ``bar``."""
        return self.margin() >= bar

    def to_frame(self) -> pd.DataFrame:
        """One row per (unit, explanation): ``correct`` marks the diagonal."""
        rows = []
        for u, unit in enumerate(self.labels):
            for e, explanation in enumerate(self.labels):
                row = {"unit": unit, "explanation": explanation, "correct": u == e}
                row.update({metric: float(matrix[u, e]) for metric, matrix in self.scores.items()})
                rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "labels": list(self.labels),
            "method": self.method,
            "scorer": self.scorer,
            "scores": {metric: matrix.tolist() for metric, matrix in self.scores.items()},
            "margin": {metric: self.margin(metric) for metric in self.scores},
            "passes": self.passes(),
            "purity": dict(self.purity),
            "n_items": list(self.n_items),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, default=_nan_to_none))
        return path

    def __str__(self) -> str:
        lines = [f"scorer check: {self.scorer}, {self.method}, rows: planted unit, columns: explanation"]
        for metric, matrix in self.scores.items():
            frame = pd.DataFrame(matrix, index=self.labels, columns=self.labels).round(3)
            lines += [f"{metric}:", frame.to_string()]
        lines.append(
            "active tokens in their class: " + ", ".join(f"{k} {v:.2f}" for k, v in self.purity.items())
        )
        verdict = "passes" if self.passes() else "FAILS: its scores do not depend on the explanation enough"
        metric = METRICS[self.method][0]
        lines.append(f"margin (correct - swapped {metric}): {self.margin():+.3f}, bar +0.100: {verdict}")
        return "\n".join(lines)


def _nan_to_none(value):
    return None if isinstance(value, float) and not np.isfinite(value) else value


def check_scorer(
    model,
    scorer: ChatModel | None = None,
    corpus: Iterable[str] | None = None,
    *,
    classes: Mapping[str, TokenPredicate] = TOKEN_CLASSES,
    method: Method = "detection",
    example_config: ExampleConfig = CHECK_EXAMPLES,
    seed: int = 0,
) -> ScorerCheck:
    """Score planted units of ``model`` (one per token class, named by its explanation) with
    every class's explanation, through ``scorer`` (default: SmolLM2-135M).

    Args:
        corpus: texts to find contexts in (default: the offline English corpus).
        classes: ``{explanation: token predicate}``. A class no token of the vocabulary
            belongs to, or whose unit finds no held-out contexts of both kinds in the corpus,
            is left out with a warning; at least two must remain.
    """
    units = []
    for label, rule in classes.items():
        try:
            # precision over recall: a planted unit should fire on its class and little else
            units.append(token_class_unit(model, label, rule, member_weight=0.1))
        except ValueError as error:  # e.g. no multi-letter tokens in a character-level vocabulary
            warnings.warn(f"check_scorer leaves out {error}", stacklevel=2)
    examples = examples_for(model, units, corpus, config=example_config) if units else []
    usable = []
    for unit_examples in examples:
        if unit_examples.quantile and unit_examples.random:
            usable.append(unit_examples)
        else:
            warnings.warn(
                f"check_scorer leaves out planted unit {unit_examples.label!r}: the corpus gave it no held-out "
                "activating or no non-activating context",
                stacklevel=2,
            )
    if len(usable) < 2:
        raise ValueError(
            f"check_scorer needs at least two planted units with held-out activating and non-activating "
            f"contexts, got {len(usable)} of {list(classes)}; pass a larger or more varied corpus"
        )
    examples = usable
    labels = tuple(e.label for e in examples)
    classes = {label: classes[label] for label in labels}
    scorer = scorer or default_explainer()
    pairs = [(u, text) for u in range(len(labels)) for text in labels]
    results = score_texts(examples, pairs, scorer, method, seed=seed)
    scores = {metric: np.full((len(labels), len(labels)), np.nan) for metric in METRICS[method]}
    for (u, text), result in zip(pairs, results, strict=True):
        for metric, matrix in scores.items():
            matrix[u, labels.index(text)] = result.get(metric, np.nan)
    n_items = tuple(results[u * len(labels)]["n_items"] for u in range(len(labels)))
    return ScorerCheck(
        labels=labels,
        method=method,
        scorer=scorer.name,
        scores=scores,
        purity={e.label: _purity(e, classes[e.label]) for e in examples},
        n_items=n_items,
        examples=tuple(examples),
    )


def _purity(examples: UnitExamples, rule: TokenPredicate) -> float:
    active = [
        token
        for context in (*examples.top, *examples.quantile)
        for token, on in zip(context.tokens, context.active, strict=True)
        if on
    ]
    return float(np.mean([rule(token) for token in active])) if active else float("nan")
