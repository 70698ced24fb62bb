"""``diff_corpora``: what features tell two corpora apart, checked on held-out texts.

Explaining a dataset (Singh et al. 2024, "Rethinking interpretability in the era of large
language models", the dataset-explanation branch) with a sparse dictionary: read both corpora
once through the model and the dictionary, count per feature how often it fires (per window
of ``context_len`` tokens and per token) and its mean activation, and rank features by the
prior-smoothed log-odds ratio of firing in B vs A (``stats.log_odds``; Monroe et al. 2008),
with its z-score and a confidence interval.

Each text falls in a discovery or a held-out split (``holdout``, seeded); the ranking uses
the discovery split only and every difference is recomputed on the held-out split:
``replicates`` says it has the same sign there with ``|z| >= z_threshold``. A top feature
that does not replicate is a fluke of the sample, however large its z.

With ``explain`` > 0 the features of largest ``|z|`` are explained with ``explain_units`` on
contexts from both corpora and scored against shuffled explanations (``score_explanations``).

The state kept while reading is four ``FeatureCounts`` (fixed size, ``3 * d_sae`` numbers
each): memory does not grow with the corpora.

Example:
    >>> diff = diff_corpora(model, sae, texts_a, texts_b, labels=("news", "fiction"))
    >>> diff.to_frame().head(10)[["feature", "freq_a", "freq_b", "log_odds", "z", "replicates"]]
    >>> diff.top(5)                       # features over-represented in B that replicate
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Literal

import pandas as pd
import torch

from mechinterp.datasets.reading import check_dictionary, check_texts, encoded_windows, splits
from mechinterp.datasets.stats import FeatureCounts, log_odds
from mechinterp.explain import (
    ChatModel,
    ExampleConfig,
    ExplanationScores,
    Unit,
    collect_examples,
    explain_units,
    score_explanations,
)
from mechinterp.explain.explainers import default_explainer

Level = Literal["window", "token"]
Direction = Literal["b", "a", "both"]
SPLITS = ("discovery", "holdout")


@dataclass(frozen=True, kw_only=True)
class CorpusDiff:
    """Per-feature statistics of two corpora (discovery and held-out splits) and, when asked
    for, scored explanations of the top features.

    ``counts[(split, corpus)]`` with ``split`` in ``discovery`` / ``holdout`` and ``corpus``
    ``a`` / ``b``. ``to_frame`` derives every number from them.
    """

    labels: tuple[str, str]
    hook_name: str
    counts: dict[tuple[str, str], FeatureCounts]
    level: Level = "window"
    prior: float = 10.0
    z_threshold: float = 1.96
    scores: ExplanationScores | None = None
    explained: tuple[int, ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        return self.counts["discovery", "a"].d_sae

    @property
    def has_holdout(self) -> bool:
        return min(self.counts["holdout", c].windows for c in "ab") > 0

    def _stats(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.counts[split, "a"], self.counts[split, "b"]
        (y_a, n_a), (y_b, n_b) = a.fires(self.level), b.fires(self.level)
        return log_odds(y_a, n_a, y_b, n_b, prior=self.prior)

    def to_frame(self) -> pd.DataFrame:
        """One row per feature, sorted by ``z`` (most over-represented in B first).

        Columns: ``feature``; ``freq_a``, ``freq_b`` (fraction of windows, or tokens with
        ``level="token"``, it fires on), ``token_freq_a``, ``token_freq_b``, ``mean_a``,
        ``mean_b`` (mean activation per token), over both splits; ``log_odds``, ``se``, ``z``,
        ``ci_low``, ``ci_high`` (95%) on the discovery split; ``holdout_log_odds``,
        ``holdout_z``, ``replicates`` on the held-out split (NaN / None without one); and,
        for explained features, ``explanation`` and its score next to the shuffled one.
        """
        both = {c: self.counts["discovery", c].merged(self.counts["holdout", c]) for c in "ab"}
        delta, se = self._stats("discovery")
        frame = pd.DataFrame({"feature": range(self.d_sae)})
        for c in "ab":
            fires, total = both[c].fires(self.level)
            frame[f"freq_{c}"] = (fires / max(total, 1)).numpy()
        for c in "ab":
            frame[f"token_freq_{c}"] = (both[c].token_fires / max(both[c].tokens, 1)).numpy()
        for c in "ab":
            frame[f"mean_{c}"] = (both[c].activation_sum / max(both[c].tokens, 1)).numpy()
        frame["log_odds"], frame["se"] = delta.numpy(), se.numpy()
        frame["z"] = (delta / se).numpy()
        frame["ci_low"], frame["ci_high"] = (delta - 1.96 * se).numpy(), (delta + 1.96 * se).numpy()
        if self.has_holdout:
            h_delta, h_se = self._stats("holdout")
            frame["holdout_log_odds"], frame["holdout_z"] = h_delta.numpy(), (h_delta / h_se).numpy()
            frame["replicates"] = (frame["holdout_log_odds"] * frame["log_odds"] > 0) & (
                frame["holdout_z"].abs() >= self.z_threshold
            )
        else:
            frame["holdout_log_odds"] = frame["holdout_z"] = math.nan
            frame["replicates"] = None
        if self.scores is not None:
            scored = self.scores.to_frame()
            scored = scored[scored["method"] == scored["method"].iloc[0]] if len(scored) else scored
            by_label = {row["label"]: row for _, row in scored.iterrows()}
            explanation, score, baseline = [], [], []
            for f in frame["feature"]:
                row = by_label.get(_label(self.hook_name, int(f))) if int(f) in self.explained else None
                metric = (
                    "correlation"
                    if row is not None and row["method"] == "simulation"
                    else "balanced_accuracy"
                )
                explanation.append(None if row is None else row["explanation"])
                score.append(math.nan if row is None else row[metric])
                baseline.append(math.nan if row is None else row[f"baseline_{metric}"])
            frame["explanation"], frame["score"], frame["shuffled_score"] = explanation, score, baseline
        return frame.sort_values("z", ascending=False, kind="stable").reset_index(drop=True)

    def top(self, n: int = 10, *, direction: Direction = "b", replicated: bool = True) -> list[int]:
        """The ``n`` features most over-represented in B (``direction="b"``), in A, or either
        (by ``|z|``), with ``|z| >= z_threshold`` and, with ``replicated`` and a held-out
        split, only those that replicate."""
        frame = self.to_frame()
        frame = frame[frame["z"].abs() >= self.z_threshold]
        if replicated and self.has_holdout:
            frame = frame[frame["replicates"].astype(bool)]
        if direction == "b":
            frame = frame[frame["z"] > 0]
        elif direction == "a":
            frame = frame[frame["z"] < 0].sort_values("z")
        elif direction == "both":
            frame = frame.reindex(frame["z"].abs().sort_values(ascending=False).index)
        else:
            raise ValueError(f"direction must be 'a', 'b' or 'both', got {direction!r}")
        return [int(f) for f in frame["feature"].head(n)]

    def summary(self) -> dict:
        """Corpus sizes and how many features differ and replicate."""
        frame = self.to_frame()
        significant = frame[frame["z"].abs() >= self.z_threshold]
        out = {
            f"{split} {name} windows": self.counts[split, c].windows
            for split in SPLITS
            for c, name in zip("ab", self.labels, strict=True)
        }
        out["features"] = self.d_sae
        out[f"more in {self.labels[1]} (|z| >= {self.z_threshold})"] = int((significant["z"] > 0).sum())
        out[f"more in {self.labels[0]} (|z| >= {self.z_threshold})"] = int((significant["z"] < 0).sum())
        if self.has_holdout:
            out["of those, replicate on held-out texts"] = int(significant["replicates"].astype(bool).sum())
        return out


def _label(hook_name: str, feature: int) -> str:
    return f"{hook_name}/latent {feature}"


def count_splits(model, dictionary, tagged, threshold: float, **options) -> dict[bool, FeatureCounts] | None:
    """Stream ``(text, held_out)`` pairs into one ``FeatureCounts`` per split."""
    counts = None
    for acts, counted, _, held in encoded_windows(model, dictionary, tagged, **options):
        if counts is None:
            counts = {flag: FeatureCounts(acts.shape[-1], threshold) for flag in (False, True)}
        for flag, accumulator in counts.items():
            rows = held == flag
            if rows.any():
                accumulator.update(acts[rows], counted[rows])
    return counts


def feature_counts(
    model,
    dictionary,
    texts: Iterable[str],
    *,
    holdout: float = 0.5,
    seed: int = 0,
    context_len: int = 64,
    batch_size: int = 16,
    threshold: float = 0.0,
    progress: bool = True,
    description: str = "reading corpus",
) -> tuple[FeatureCounts, FeatureCounts]:
    """``(discovery, held-out)`` counts of ``dictionary``'s features on ``texts``, read once.

    Example:
        >>> discovery, held = feature_counts(model, sae, texts)
        >>> discovery.window_fires / discovery.windows        # firing rate per feature
    """
    check_texts(texts, "texts")
    counts = count_splits(
        model,
        dictionary,
        splits(texts, holdout, seed),
        threshold,
        context_len=context_len,
        batch_size=batch_size,
        progress=progress,
        description=description,
    )
    if counts is None:
        raise ValueError(f"{description}: the texts gave no tokens; pass non-empty texts")
    return counts[False], counts[True]


def diff_corpora(
    model,
    dictionary,
    corpus_a: Iterable[str],
    corpus_b: Iterable[str],
    *,
    labels: tuple[str, str] = ("A", "B"),
    level: Level = "window",
    prior: float = 10.0,
    holdout: float = 0.5,
    z_threshold: float = 1.96,
    seed: int = 0,
    context_len: int = 64,
    batch_size: int = 16,
    threshold: float = 0.0,
    explain: int = 0,
    explainer: ChatModel | None = None,
    scorer: ChatModel | None = None,
    methods: Sequence[str] = ("detection",),
    example_config: ExampleConfig | None = None,
    progress: bool = True,
) -> CorpusDiff:
    """Rank ``dictionary``'s features by how much more often they fire in ``corpus_b`` than
    in ``corpus_a``; see the module docstring.

    Args:
        dictionary: an SAE (any object with ``encode`` and ``hook_name``).
        level: count firing per ``window`` (``context_len`` tokens; default) or per ``token``.
        prior: strength of the log-odds prior, in pseudo-counts.
        holdout: fraction of each corpus's texts held out to check replication (0: none).
        threshold: a feature fires where its activation exceeds this.
        explain: explain and score the this many features of largest ``|z|`` (at least two
            give each a shuffled baseline) on discovery texts of both corpora; needs corpora that can be read twice (lists). ``explainer`` / ``scorer``:
            ``ChatModel`` s (default: the embedded SmolLM2); ``methods``: scoring methods.

    Example:
        >>> diff = diff_corpora(model, sae, wordnet, fortunes, labels=("wordnet", "fortunes"))
    """
    check_dictionary(model, dictionary)
    if level not in ("window", "token"):
        raise ValueError(f"level must be 'window' or 'token', got {level!r}")
    check_texts(corpus_a, "corpus_a")
    check_texts(corpus_b, "corpus_b")
    if explain and not (isinstance(corpus_a, Sequence) and isinstance(corpus_b, Sequence)):
        raise TypeError("explain needs corpora that can be read twice: pass lists of texts")
    counts = {}
    for c, corpus, label in (("a", corpus_a, labels[0]), ("b", corpus_b, labels[1])):
        discovery, held = feature_counts(
            model,
            dictionary,
            corpus,
            holdout=holdout,
            seed=seed,
            context_len=context_len,
            batch_size=batch_size,
            threshold=threshold,
            progress=progress,
            description=f"reading {label}",
        )
        counts["discovery", c], counts["holdout", c] = discovery, held
    if counts["discovery", "a"].d_sae != counts["discovery", "b"].d_sae:
        raise ValueError("the dictionary gave a different number of features on the two corpora")
    diff = CorpusDiff(
        labels=labels,
        hook_name=dictionary.hook_name,
        counts=counts,
        level=level,
        prior=prior,
        z_threshold=z_threshold,
    )
    if not explain:
        return diff
    frame = diff.to_frame()
    features = [
        int(f) for f in frame.loc[frame["z"].abs().sort_values(ascending=False).index, "feature"][:explain]
    ]
    discovery_texts = [
        t for t, out in chain(splits(corpus_a, holdout, seed), splits(corpus_b, holdout, seed)) if not out
    ]
    scores = explain_features(
        model,
        dictionary,
        features,
        discovery_texts,
        explainer=explainer,
        scorer=scorer,
        methods=methods,
        example_config=example_config,
    )
    return CorpusDiff(**{**diff.__dict__, "scores": scores, "explained": tuple(features)})


def explain_features(
    model,
    dictionary,
    features: Sequence[int],
    corpus: Iterable[str],
    *,
    explainer: ChatModel | None = None,
    scorer: ChatModel | None = None,
    methods: Sequence[str] = ("detection",),
    example_config: ExampleConfig | None = None,
) -> ExplanationScores:
    """Explain ``features`` of ``dictionary`` from their contexts in ``corpus`` and score the
    explanations against shuffled ones (``explain_units`` then ``score_explanations``).

    Example:
        >>> scores = explain_features(model, sae, diff.top(5), texts, scorer=OpenAIChat(url, name))
    """
    explainer = explainer or default_explainer()
    units = [Unit.sae_latent(dictionary, f, label=_label(dictionary.hook_name, f)) for f in features]
    examples = collect_examples(model, units, corpus, example_config or ExampleConfig(), progress=False)
    explained = explain_units(model, units, examples=examples, explainer=explainer)
    return score_explanations(
        model, units, explained, scorer=scorer or explainer, method=tuple(methods), examples=examples
    )
