"""Explaining datasets and models through their features: corpus diffing, corpus description,
hypothesis checking, model diffing with a crosscoder.

Example:
    >>> from mechinterp.datasets import diff_corpora, check_hypothesis, held_out
    >>> diff = diff_corpora(model, sae, texts_a, texts_b, labels=("A", "B"))
    >>> diff.to_frame().head()            # features ranked by log-odds z, replication on held-out texts
    >>> check_hypothesis(["mentions a year"], held_out(texts_a), held_out(texts_b), scorer=scorer)
"""

from mechinterp.datasets.describe import CorpusDescription, describe_corpus
from mechinterp.datasets.diff import CorpusDiff, diff_corpora, explain_features, feature_counts
from mechinterp.datasets.hypothesis import HypothesisCheck, check_hypothesis
from mechinterp.datasets.models import (
    Crosscoder,
    ModelDiff,
    crosscoder_examples,
    diff_models,
    paired_activations,
    sae_difference,
    train_crosscoder,
)
from mechinterp.datasets.reading import held_out
from mechinterp.datasets.stats import FeatureCounts, log_odds

__all__ = [
    "CorpusDescription",
    "CorpusDiff",
    "Crosscoder",
    "FeatureCounts",
    "HypothesisCheck",
    "ModelDiff",
    "check_hypothesis",
    "crosscoder_examples",
    "describe_corpus",
    "diff_corpora",
    "diff_models",
    "explain_features",
    "feature_counts",
    "held_out",
    "log_odds",
    "paired_activations",
    "sae_difference",
    "train_crosscoder",
]
