"""``describe_corpus``: what a corpus contains, as the features over-represented in it.

The corpus is diffed against a reference (``diff_corpora``; by default the offline English
corpus's training split, WordNet glosses and standard-library docstrings): the ``n_features``
features most over-represented in it that replicate on held-out texts describe it. They are
then grouped by **co-occurrence**: a second pass over the corpus counts, for those features
only, in how many windows each pair fires together; the Jaccard similarity of their window
sets ``|A and B| / |A or B|`` links features, and average-linkage agglomerative clustering
(cut where the average similarity falls below ``min_similarity``) forms the groups (a
theme such as dates or code is often several features that fire together). Example contexts
come from ``collect_examples``; explanations, when asked for, from ``explain_units`` and are
scored against shuffled ones.

Example:
    >>> description = describe_corpus(model, sae, texts)
    >>> description.to_frame()       # feature, z, frequency here and in the reference, cluster, example
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mechinterp.data.corpus import load_corpus
from mechinterp.datasets.diff import CorpusDiff, _label, diff_corpora, explain_features
from mechinterp.datasets.reading import encoded_windows
from mechinterp.explain import ChatModel, ExampleConfig, ExplanationScores, Unit, collect_examples
from mechinterp.explain.examples import UnitExamples


@dataclass(frozen=True, kw_only=True)
class CorpusDescription:
    """The features that describe a corpus, their clusters and example contexts."""

    diff: CorpusDiff
    features: tuple[int, ...]
    cooccurrence: np.ndarray  # [feature, feature]: windows where both fire
    clusters: tuple[int, ...]  # cluster id per feature, in ``features`` order
    examples: tuple[UnitExamples, ...]
    scores: ExplanationScores | None = None

    def jaccard(self) -> np.ndarray:
        """``[feature, feature]`` Jaccard similarity of the features' window sets."""
        return _jaccard(self.cooccurrence)

    def to_frame(self) -> pd.DataFrame:
        """One row per describing feature: its diff statistics, ``cluster`` and ``example``
        (its top context, active tokens marked ``<<...>>``); ``explanation`` when explained."""
        frame = self.diff.to_frame().set_index("feature").loc[list(self.features)].reset_index()
        frame["cluster"] = list(self.clusters)
        frame["example"] = [e.top[0].marked() if e.top else None for e in self.examples]
        columns = ["feature", "cluster", "z", "log_odds", "freq_a", "freq_b", "replicates", "example"]
        if "explanation" in frame:
            columns += ["explanation", "score", "shuffled_score"]
        return frame[columns].rename(columns={"freq_a": "freq_reference", "freq_b": "freq_corpus"})


def _jaccard(counts: np.ndarray) -> np.ndarray:
    own = np.diag(counts)
    union = own[:, None] + own[None, :] - counts
    return np.divide(counts, union, out=np.zeros_like(counts, dtype=float), where=union > 0)


def average_linkage(similarity: np.ndarray, min_similarity: float) -> list[int]:
    """Cluster ids from average-linkage agglomerative clustering on a similarity matrix:
    merge the two clusters of highest average similarity while it is at least
    ``min_similarity``. Ids are numbered by first appearance."""
    clusters = [[i] for i in range(len(similarity))]
    while len(clusters) > 1:
        best, pair = -1.0, None
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                value = float(similarity[np.ix_(clusters[i], clusters[j])].mean())
                if value > best:
                    best, pair = value, (i, j)
        if best < min_similarity:
            break
        i, j = pair
        clusters[i] += clusters.pop(j)
    ids = [0] * len(similarity)
    for number, members in enumerate(sorted(clusters, key=min)):
        for m in members:
            ids[m] = number
    return ids


@torch.no_grad()
def cooccurrence(
    model, dictionary, features: Sequence[int], corpus, *, context_len: int, batch_size: int, threshold: float
) -> np.ndarray:
    """``[feature, feature]``: the number of windows in which both features fire (diagonal:
    each feature's windows), read in one streamed pass."""
    index = torch.as_tensor(list(features), dtype=torch.long)
    counts = torch.zeros(len(index), len(index), dtype=torch.float64)
    tagged = ((text, False) for text in corpus)
    for acts, counted, _, _ in encoded_windows(
        model, dictionary, tagged, context_len=context_len, batch_size=batch_size
    ):
        picked = acts[..., index.to(acts.device)].masked_fill(~counted[..., None], 0.0)
        fires = (picked > threshold).any(1).double().cpu()  # [window, feature]
        counts += fires.T @ fires
    return counts.numpy()


def describe_corpus(
    model,
    dictionary,
    corpus: Sequence[str],
    reference: Sequence[str] | None = None,
    *,
    n_features: int = 20,
    min_similarity: float = 0.3,
    labels: tuple[str, str] = ("reference", "corpus"),
    context_len: int = 64,
    batch_size: int = 16,
    threshold: float = 0.0,
    max_reference_texts: int = 2000,
    diff: CorpusDiff | None = None,
    explain: bool = False,
    explainer: ChatModel | None = None,
    scorer: ChatModel | None = None,
    example_config: ExampleConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> CorpusDescription:
    """Describe ``corpus`` by the ``n_features`` features most over-represented in it against
    ``reference`` (default: ``max_reference_texts`` texts of the offline English corpus),
    their co-occurrence clusters and example contexts; see the module docstring. ``diff``:
    an existing ``diff_corpora(model, dictionary, reference, corpus)`` result to reuse
    (``reference`` is then only its label's texts and is not read again).

    Example:
        >>> d = describe_corpus(model, sae, my_texts, n_features=10)
        >>> d.to_frame()[["feature", "cluster", "z", "example"]]
    """
    if isinstance(corpus, str) or not isinstance(corpus, Sequence):
        raise TypeError("corpus must be a list of texts (it is read more than once)")
    options = {"context_len": context_len, "batch_size": batch_size, "threshold": threshold}
    if diff is None:
        if reference is None:
            reference = load_corpus("default", "train", max_texts=max_reference_texts, seed=seed)
        diff = diff_corpora(
            model, dictionary, reference, corpus, labels=labels, seed=seed, progress=progress, **options
        )
    features = diff.top(n_features, direction="b")
    if not features:
        raise ValueError(
            f"no feature is over-represented in the corpus against the reference in a way that replicates "
            f"(|z| >= {diff.z_threshold}); pass more texts"
        )
    counts = cooccurrence(model, dictionary, features, corpus, **options)
    clusters = average_linkage(_jaccard(counts), min_similarity)
    units = [Unit.sae_latent(dictionary, f, label=_label(dictionary.hook_name, f)) for f in features]
    config = example_config or ExampleConfig(context_len=context_len, seed=seed)
    examples = collect_examples(model, units, corpus, config, progress=False)
    scores = None
    if explain:
        scores = explain_features(
            model, dictionary, features, corpus, explainer=explainer, scorer=scorer, example_config=config
        )
        diff = CorpusDiff(**{**diff.__dict__, "scores": scores, "explained": tuple(features)})
    return CorpusDescription(
        diff=diff,
        features=tuple(features),
        cooccurrence=counts,
        clusters=tuple(clusters),
        examples=tuple(examples),
        scores=scores,
    )
