"""Local explanations: which input tokens drove this prediction.

Interpretability work asks two kinds of question (Singh et al. 2024, arXiv 2402.01761):
*local* (why this output, for this input) and *mechanistic* (which components compute it).
This package answers the first on our hooked models, batched, and meets the second through
``layer=``: the same methods attribute to any hook (the residual stream per position, head
outputs per position and head).

Methods (``attribute_tokens(..., method=...)``):

- ``integrated_gradients`` (Sundararajan et al. 2017) over the input embeddings or a hook's
  activation; every step of every example is a row of a few batched passes; Gauss-Legendre
  or Riemann rules; baselines: a token repeated at every position (the pad token by
  default), zeros, or a corrupt prompt of the same length (``PromptPairs``: the path from
  the corrupt run to the clean one). The completeness gap (sum of scores vs ``f(x) -
  f(baseline)``) is reported.
- ``gradient_x_input``, ``saliency`` (gradient norm);
- ``occlusion``: leave one position out (replaced by the baseline's), all copies batched;
- ``attention_rollout`` (Abnar & Zuidema 2020), with the residual connection.

Targets: the logit of an answer, a logit difference, or the summed log-probability of a
multi-token continuation (``target="continuation"``). Logits are the model's own, soft-capped
where the family caps them (Gemma 2), as ``model(tokens)`` and Hugging Face return them.

Without ``layer=`` the site is ``hook_embed``: each token's embedding as it enters the
residual stream, times the family's embedding scale (Gemma: ``sqrt(d_model)``). That is what
Hugging Face's ``get_input_embeddings()`` returns and ``inputs_embeds`` takes for every
supported family (Gemma 2 and 3 scale inside their embedding module), so captum on the HF
model gives the same numbers. Integrated gradients and gradient x input do not depend on such
a scale; saliency (a gradient norm) does.

Example:
    >>> from mechinterp.token_attribution import attribute_tokens, compare_methods
    >>> a = attribute_tokens(model, "The Eiffel Tower is in the city of", correct=" Paris", steps=64)
    >>> a.completeness.max_gap                  # relative gap of the sum, e.g. 0.003
    >>> mechinterp.plotting.token_attribution_heatmap(a).show()
    >>> compare_methods(model, "The Eiffel Tower is in the city of", correct=" Paris").agreement()
"""

from mechinterp.token_attribution.api import METHODS, Method, attribute_tokens, compare_methods
from mechinterp.token_attribution.inputs import ZeroBaselineWarning
from mechinterp.token_attribution.result import Completeness, MethodComparison, TokenAttribution
from mechinterp.token_attribution.rules import RULES, IntegrationRule, integration_points

__all__ = [
    "METHODS",
    "RULES",
    "Completeness",
    "IntegrationRule",
    "Method",
    "MethodComparison",
    "TokenAttribution",
    "ZeroBaselineWarning",
    "attribute_tokens",
    "compare_methods",
    "integration_points",
]
