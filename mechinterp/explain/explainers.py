"""``explain_units``: ask a chat model what each unit responds to.

The explainer is any ``ChatModel``: ``LocalChat`` (our loader; the default is the embedded
SmolLM2-135M-Instruct with its chat template) or ``OpenAIChat`` (any OpenAI-compatible
endpoint). A unit whose request fails (endpoint unreachable, malformed reply) or whose reply
holds no explanation is recorded with its error; the other units are unaffected.

Example:
    >>> explained = explain_units(model, units, texts, explainer=OpenAIChat(url, "llama-3.1-8b"))
    >>> explained.texts()                 # {label: explanation or None}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mechinterp.explain.chat import ChatError, ChatModel, LocalChat
from mechinterp.explain.examples import ExampleConfig, UnitExamples, examples_for
from mechinterp.explain.prompts import explainer_prompt, parse_explanation
from mechinterp.explain.units import Unit


@dataclass(frozen=True, kw_only=True)
class Explanation:
    """One unit's explanation, or the reason there is none (``error``)."""

    label: str
    text: str | None
    error: str | None = None
    reply: str | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "text": self.text, "error": self.error, "reply": self.reply}


@dataclass(frozen=True, kw_only=True)
class ExplainedUnits:
    """Explanations in unit order, the examples they came from, and the explainer's name."""

    explanations: tuple[Explanation, ...]
    examples: tuple[UnitExamples, ...]
    explainer: str

    def texts(self) -> dict[str, str | None]:
        return {e.label: e.text for e in self.explanations}


def default_explainer() -> LocalChat:
    """The embedded SmolLM2-135M-Instruct, through our loader, as a chat model."""
    import mechinterp

    return LocalChat(mechinterp.load_model("smollm2-135m"), name="smollm2-135m")


def explain_units(
    model,
    units: Sequence[Unit],
    corpus: Iterable[str] | None = None,
    explainer: ChatModel | None = None,
    *,
    examples: Sequence[UnitExamples] | None = None,
    example_config: ExampleConfig | None = None,
    n_examples: int = 10,
    max_tokens: int = 60,
) -> ExplainedUnits:
    """Explain every unit from its top-activating contexts.

    Args:
        corpus: texts to collect examples from (ignored when ``examples`` is given); default:
            the offline English corpus, ``mechinterp.data.corpus.load_corpus("default")``.
        explainer: a ``ChatModel``; default ``default_explainer()``.
        examples: ``collect_examples`` output for ``units`` (saves reading the corpus again).
        n_examples: top contexts shown per unit.
        max_tokens: longest reply.
    """
    examples = examples_for(model, units, corpus, examples, example_config)
    explainer = explainer or default_explainer()
    explanations: list[Explanation | None] = [None] * len(examples)
    asked = []
    for i, unit_examples in enumerate(examples):
        if not unit_examples.top:
            explanations[i] = Explanation(
                label=unit_examples.label, text=None, error="no activating context in the corpus"
            )
        else:
            asked.append(i)
    conversations = [
        explainer_prompt(examples[i].top[:n_examples], examples[i].max_activation) for i in asked
    ]
    replies = explainer.complete(conversations, max_tokens=max_tokens) if conversations else []
    for i, conversation, reply in zip(asked, conversations, replies, strict=True):
        label = examples[i].label
        if isinstance(reply, ChatError):
            explanations[i] = Explanation(label=label, text=None, error=str(reply))
            continue
        shown = "\n".join(message["content"] for message in conversation)
        try:
            explanations[i] = Explanation(label=label, text=parse_explanation(reply, shown), reply=reply)
        except ValueError as error:
            explanations[i] = Explanation(label=label, text=None, error=str(error), reply=reply)
    return ExplainedUnits(
        explanations=tuple(explanations), examples=tuple(examples), explainer=explainer.name
    )
