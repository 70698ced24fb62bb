"""Natural-language explanations of units (SAE latents, neurons, heads, directions), scored.

units -> ``collect_examples`` -> ``explain_units`` (a local model or an OpenAI-compatible
endpoint) -> ``score_explanations`` (detection, fuzzing, simulation), every score next to
the same scorer on shuffled explanations; ``check_scorer`` tells whether a scorer reads
explanations at all (planted units, correct vs swapped explanations). ``ChatServer`` (``mechinterp serve``) puts any
loaded model behind an OpenAI-compatible endpoint.

Example:
    >>> from mechinterp.explain import Unit, explain_units, score_explanations
    >>> units = [Unit.neuron(5, i) for i in range(20)]
    >>> explained = explain_units(model, units, texts)
    >>> scores = score_explanations(model, units, explained, method="detection")
    >>> scores.summary()
"""

from mechinterp.explain.chat import ChatError, ChatModel, LocalChat, OpenAIChat, ResponseCache
from mechinterp.explain.examples import Context, ExampleConfig, UnitExamples, collect_examples
from mechinterp.explain.explainers import ExplainedUnits, Explanation, default_explainer, explain_units
from mechinterp.explain.scorer_check import ScorerCheck, check_scorer
from mechinterp.explain.scoring import METHODS, ExplanationScores, score_explanations
from mechinterp.explain.server import ChatServer, ServerLimits
from mechinterp.explain.units import Unit

__all__ = [
    "METHODS",
    "ChatError",
    "ChatModel",
    "ChatServer",
    "Context",
    "ExampleConfig",
    "ExplainedUnits",
    "Explanation",
    "ExplanationScores",
    "LocalChat",
    "OpenAIChat",
    "ResponseCache",
    "ScorerCheck",
    "ServerLimits",
    "Unit",
    "UnitExamples",
    "check_scorer",
    "collect_examples",
    "default_explainer",
    "explain_units",
    "score_explanations",
]
