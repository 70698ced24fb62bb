"""Looking inside: the logit lens, direct logit attribution, attention-head detection.

Example:
    >>> from mechinterp.lens import logit_lens
    >>> lens = logit_lens(model, "The Eiffel Tower is located in the city of", targets=[" Paris"])
"""

from mechinterp.data.corpus import stdlib_corpus
from mechinterp.lens.dla import DLAResult, direct_logit_attribution
from mechinterp.lens.heads import (
    AttentionPatterns,
    attention_patterns,
    detection_pattern,
    head_scores,
    induction_scores,
    repeated_random_tokens,
)
from mechinterp.lens.logit_lens import LensResult, logit_lens
from mechinterp.lens.tuned_lens import TunedLens

__all__ = [
    "AttentionPatterns",
    "DLAResult",
    "LensResult",
    "TunedLens",
    "attention_patterns",
    "detection_pattern",
    "direct_logit_attribution",
    "head_scores",
    "induction_scores",
    "logit_lens",
    "repeated_random_tokens",
    "stdlib_corpus",
]
