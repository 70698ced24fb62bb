"""The prompts: one for the explainer, one per scoring method, and reading the explanation.

Formats follow OpenAI (2023) and delphi (Paulo et al. 2024): the explainer sees excerpts
with active tokens marked ``<<token>>``, each followed by its active tokens and their
activations scaled to integers 0-10 (10 = the unit's largest activation on the corpus), and
ends its answer with a line ``[EXPLANATION]: ...``. The unit's name is never shown.

Example:
    >>> conversation = explainer_prompt(unit_examples.top, unit_examples.max_activation)
    >>> parse_explanation("The tokens are years.\\n[EXPLANATION]: four-digit years")
    'four-digit years'
"""

from __future__ import annotations

from collections.abc import Sequence

from mechinterp.explain.chat import Conversation
from mechinterp.explain.examples import Context

EXPLAINER_SYSTEM = (
    "You study one unit inside a language model. You get text excerpts; the tokens where the "
    "unit is active are marked <<like this>>, and after each excerpt its active tokens are "
    "listed with their activation from 0 to 10. Find what the active tokens have in common "
    "(which words or symbols, in what context). Reply with one short phrase on a last line "
    "that starts with [EXPLANATION]:"
)
SCORER_SYSTEM = "You check explanations of what makes a unit of a language model active. Answer briefly."
YES_NO = ("Yes", "No")
SCALE = tuple(str(i) for i in range(11))


def scaled(activation: float, max_activation: float) -> int:
    """An activation as an integer 0-10 relative to the unit's maximum."""
    if max_activation <= 0:
        return 0
    return max(0, min(10, round(10 * activation / max_activation)))


def explainer_prompt(contexts: Sequence[Context], max_activation: float) -> Conversation:
    """The explainer's conversation for one unit's top contexts."""
    if not contexts:
        raise ValueError("an explainer prompt needs at least one activating context")
    parts = []
    for number, context in enumerate(contexts, start=1):
        active = [
            f"{t.strip() or repr(t)} ({scaled(a, max_activation)})"
            for t, a, on in zip(context.tokens, context.activations, context.active, strict=True)
            if on
        ]
        parts.append(f"Excerpt {number}: {context.marked()}\nActive tokens: {', '.join(active)}")
    user = "\n\n".join(parts) + "\n\nWhat does the unit respond to? End with [EXPLANATION]: <short phrase>"
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": user}]


def parse_explanation(reply: str, prompt: str | None = None) -> str:
    """The explanation in a reply: the first line after the last ``[EXPLANATION]:`` (else
    the reply's first non-empty line, where small models put their claim before running
    on), quotes and markup stripped.

    Raises:
        ValueError: the reply holds no explanation (empty or only the marker), or, when
            ``prompt`` (the text the explainer was shown) is given, the line copies it: an
            excerpt heading, ``<<marked>>`` text or six words in a row from the prompt.
    """
    marker = "[EXPLANATION]:"
    text = reply.rsplit(marker, 1)[1] if marker in reply else reply
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"empty explanation (reply: {reply[:200]!r})")
    line = lines[0].strip(" \"'`*").removeprefix("[EXPLANATION]").strip(" :")
    if not line:
        raise ValueError(f"empty explanation (reply: {reply[:200]!r})")
    if prompt is not None and _copies(line, prompt):
        raise ValueError(f"the reply copies the prompt instead of explaining (reply: {reply[:200]!r})")
    return line[:300]


def _copies(line: str, prompt: str, run: int = 6) -> bool:
    if line.startswith("Excerpt") or "<<" in line:
        return True
    words, source = line.split(), " ".join(prompt.split())
    return any(" ".join(words[i : i + run]) in source for i in range(len(words) - run + 1))


def detection_prompt(explanation: str, context: Context) -> Conversation:
    """Is the unit active anywhere in this (unmarked) excerpt?"""
    text = "".join(context.tokens)
    user = (
        f"Explanation of the unit: {explanation}\n\nText: {text}\n\n"
        "Does the text contain something the explanation describes? Answer Yes or No."
    )
    return [{"role": "system", "content": SCORER_SYSTEM}, {"role": "user", "content": user}]


def fuzzing_prompt(explanation: str, context: Context, marks: Sequence[bool]) -> Conversation:
    """Are the marked tokens the ones the explanation describes?"""
    user = (
        f"Explanation of the unit: {explanation}\n\nText: {context.marked(marks)}\n\n"
        "Are the tokens marked <<like this>> examples of what the explanation describes? Answer Yes or No."
    )
    return [{"role": "system", "content": SCORER_SYSTEM}, {"role": "user", "content": user}]


def simulation_prompt(explanation: str, context: Context, position: int) -> Conversation:
    """How active is the unit on the one marked token, from 0 to 10?"""
    marks = [i == position for i in range(len(context.tokens))]
    user = (
        f"Explanation of the unit: {explanation}\n\nText: {context.marked(marks)}\n\n"
        "On a scale from 0 (not at all) to 10 (exactly), how well does the marked token match "
        "the explanation? Answer with one number."
    )
    return [{"role": "system", "content": SCORER_SYSTEM}, {"role": "user", "content": user}]
