"""``check_hypothesis``: does a natural-language description separate two corpora?

A hypothesis about how corpus B differs from A ("mentions a year") is phrased as a property
of B's texts. A scorer chat model reads each held-out text of both corpora with the
hypothesis and says whether it fits (its probability of "Yes"); how well that probability
separates B from A is the score: the AUC (B positive; 0.5 = no separation, below 0.5 = it
describes A) and the balanced accuracy of the answer (P(Yes) > P(No)).

The same discipline as explanation scoring (``mechinterp.explain.scoring``): every score
sits next to baselines on the same texts: ``baselines`` (other descriptions, e.g. other
features' explanations) and the hypothesis with its words **shuffled** (same vocabulary,
no sentence). A permutation test of the corpus labels (the scorer is not asked again) gives
the p-value of each AUC. A hypothesis is supported when its AUC beats every baseline's and
its p-value is small; check the scorer itself with ``mechinterp.explain.check_scorer``.

Example:
    >>> check = check_hypothesis(["mentions a year"], held_out(a), held_out(b), scorer=scorer,
    ...                          baselines=["mentions an animal", "is a question"])
    >>> check.to_frame()          # hypothesis, kind, auc, balanced_accuracy, p_value
    >>> check.margin()            # the hypothesis's AUC minus the best baseline's
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mechinterp.explain import ChatError, ChatModel
from mechinterp.explain.explainers import default_explainer
from mechinterp.explain.prompts import YES_NO
from mechinterp.probing import roc_auc

HYPOTHESIS_SYSTEM = "You check descriptions of texts. Answer briefly."


def hypothesis_prompt(hypothesis: str, text: str) -> list[dict]:
    """The scorer's conversation: does ``hypothesis`` fit ``text``?"""
    user = (
        f"Description: {hypothesis}\n\nText: {text}\n\nDoes the description fit the text? Answer Yes or No."
    )
    return [{"role": "system", "content": HYPOTHESIS_SYSTEM}, {"role": "user", "content": user}]


@dataclass(frozen=True, kw_only=True)
class HypothesisCheck:
    """One row per description: ``kind`` is ``hypothesis``, ``baseline`` or ``shuffled``."""

    rows: tuple[dict, ...]
    labels: tuple[str, str]
    scorer: str
    texts: tuple[tuple[str, ...], tuple[str, ...]]
    p_yes: dict[str, tuple[float, ...]]

    def to_frame(self) -> pd.DataFrame:
        """Columns: hypothesis, kind, auc, balanced_accuracy, p_value, n_a, n_b, n_failed."""
        return pd.DataFrame(list(self.rows))

    def margin(self, hypothesis: str | None = None) -> float:
        """The hypothesis's AUC minus the largest AUC of a baseline or shuffled description."""
        frame = self.to_frame()
        own = frame[frame["kind"] == "hypothesis"]
        if hypothesis is not None:
            own = own[own["hypothesis"] == hypothesis]
        others = frame[frame["kind"] != "hypothesis"]["auc"].dropna()
        if own.empty or others.empty:
            return float("nan")
        return float(own["auc"].iloc[0] - others.max())

    def supported(self, hypothesis: str | None = None, *, margin: float = 0.1, alpha: float = 0.01) -> bool:
        """AUC above every baseline by ``margin`` and permutation p-value below ``alpha``."""
        frame = self.to_frame()
        own = frame[frame["kind"] == "hypothesis"]
        if hypothesis is not None:
            own = own[own["hypothesis"] == hypothesis]
        return bool(self.margin(hypothesis) >= margin and own["p_value"].iloc[0] < alpha)

    def to_dict(self) -> dict:
        return {
            "labels": list(self.labels),
            "scorer": self.scorer,
            "rows": [
                {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
                for r in self.rows
            ],
            "margin": self.margin(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return path


def shuffled_words(text: str, seed: int) -> str:
    """``text`` with its words in a random order (a different one when it has two words)."""
    words = text.split()
    if len(words) < 2:
        return text
    rng = np.random.default_rng(seed)
    for _ in range(20):
        order = rng.permutation(len(words))
        if (order != np.arange(len(words))).any():
            break
    return " ".join(words[i] for i in order)


def check_hypothesis(
    hypotheses: str | Sequence[str],
    corpus_a: Sequence[str],
    corpus_b: Sequence[str],
    scorer: ChatModel | None = None,
    *,
    baselines: Sequence[str] = (),
    shuffled: bool = True,
    labels: tuple[str, str] = ("A", "B"),
    n_texts: int = 50,
    max_chars: int = 400,
    n_permutations: int = 2000,
    seed: int = 0,
) -> HypothesisCheck:
    """Score each hypothesis (a property of corpus B's texts) by how well the scorer's
    P(Yes) separates ``n_texts`` random texts of ``corpus_b`` from ``corpus_a``'s, next to
    ``baselines`` and word-shuffled hypotheses; see the module docstring. Pass held-out
    texts (``held_out``): texts the hypothesis was not drawn from.

    Args:
        scorer: a ``ChatModel`` (default: the embedded SmolLM2-135M-Instruct).
        max_chars: texts are cut to this many characters.
        n_permutations: label permutations for the p-value.
    """
    hypotheses = [hypotheses] if isinstance(hypotheses, str) else list(hypotheses)
    if not hypotheses or not all(isinstance(h, str) and h.strip() for h in hypotheses):
        raise ValueError(f"hypotheses must be non-empty strings, got {hypotheses!r}")
    for name, corpus in (("corpus_a", corpus_a), ("corpus_b", corpus_b)):
        if isinstance(corpus, str) or len(corpus) == 0:
            raise ValueError(f"{name} must be a non-empty list of texts")
    rng = np.random.default_rng(seed)
    texts = tuple(
        tuple(
            str(corpus[i])[:max_chars]
            for i in rng.choice(len(corpus), min(n_texts, len(corpus)), replace=False)
        )
        for corpus in (corpus_a, corpus_b)
    )
    descriptions = [(h, "hypothesis") for h in hypotheses]
    descriptions += [(b, "baseline") for b in baselines]
    if shuffled:
        descriptions += [(shuffled_words(h, seed + i), "shuffled") for i, h in enumerate(hypotheses)]
    descriptions = list(dict.fromkeys(descriptions))
    scorer = scorer or default_explainer()
    items = [*texts[0], *texts[1]]
    truth = np.array([0] * len(texts[0]) + [1] * len(texts[1]))
    conversations = [hypothesis_prompt(d, text) for d, _ in descriptions for text in items]
    answers = scorer.choice_probs(conversations, YES_NO)
    rows, p_yes = [], {}
    for k, (description, kind) in enumerate(descriptions):
        mine = answers[k * len(items) : (k + 1) * len(items)]
        ok = np.array([not isinstance(a, ChatError) for a in mine])
        probs = np.array(
            [float(a[0] / max(a.sum(), 1e-12)) if good else np.nan for a, good in zip(mine, ok, strict=True)]
        )
        p_yes[description] = tuple(probs.tolist())
        row = {
            "hypothesis": description,
            "kind": kind,
            "auc": np.nan,
            "balanced_accuracy": np.nan,
            "p_value": np.nan,
        }
        y, p = truth[ok], probs[ok]
        if len(set(y.tolist())) == 2:
            row["auc"] = roc_auc(torch.as_tensor(p), torch.as_tensor(y))
            said = p > 0.5
            row["balanced_accuracy"] = float((said[y == 1].mean() + (~said[y == 0]).mean()) / 2)
            row["p_value"] = _permutation_p(p, y, row["auc"], n_permutations, rng)
        row |= {
            "n_a": int(ok[truth == 0].sum()),
            "n_b": int(ok[truth == 1].sum()),
            "n_failed": int((~ok).sum()),
        }
        rows.append(row)
    return HypothesisCheck(rows=tuple(rows), labels=labels, scorer=scorer.name, texts=texts, p_yes=p_yes)


def _permutation_p(scores: np.ndarray, labels: np.ndarray, auc: float, n: int, rng) -> float:
    """Two-sided p-value of ``auc`` under random relabelling (AUC from the fixed ranks)."""
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    permuted = np.argsort(rng.random((n, len(labels))), axis=1)  # [permutation, item]
    sums = labels[permuted].astype(float) @ ranks
    null = (sums - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return float((1 + (np.abs(null - 0.5) >= abs(auc - 0.5) - 1e-12).sum()) / (1 + n))
