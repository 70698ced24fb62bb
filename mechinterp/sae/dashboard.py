"""Feature dashboards: what each latent fires on and what it does to the logits.

For each chosen latent: its top-activating contexts (a window of tokens around the peak,
every token with its activation), the distribution of its non-zero activations, and the
tokens its decoder direction promotes and suppresses most (``feature_logit_effects``), in
the spirit of Bricken et al. 2023 and Neuronpedia. ``mechinterp.plotting.dashboard_html``
renders a ``FeatureDashboards`` as one self-contained offline HTML page.

Example:
    >>> boards = feature_dashboards(model, sae, load_corpus("default", "test", max_texts=300), [3, 17])
    >>> from mechinterp.plotting import dashboard_html
    >>> Path("features.html").write_text(dashboard_html(boards))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from mechinterp.sae.features import _check_features, feature_logit_effects, spliced
from mechinterp.sae.model import SAE


@dataclass(frozen=True)
class Context:
    """A window of tokens around a latent's peak in one text."""

    text_index: int
    tokens: list[str]
    activations: list[float]
    peak: float


@dataclass(frozen=True)
class FeatureDashboard:
    """One latent: top contexts, non-zero activations (histogram), promoted/suppressed tokens
    with their logit effects, and how often it fires."""

    feature: int
    contexts: list[Context]
    activations: Float[Tensor, " example"]  # the non-zero ones
    frequency: float
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]


@dataclass(frozen=True)
class FeatureDashboards:
    """Dashboards of several latents of one SAE."""

    hook_name: str
    model_name: str
    n_tokens: int
    features: list[FeatureDashboard]


@torch.no_grad()
def feature_dashboards(
    model,
    sae: SAE,
    texts: list[str],
    features: Sequence[int],
    *,
    n_contexts: int = 8,
    window: int = 12,
    n_tokens: int = 10,
    context: int = 128,
    texts_per_forward: int = 16,
) -> FeatureDashboards:
    """Collect dashboards for ``features`` of ``sae`` over ``texts`` (see the module docstring).

    ``window`` tokens are shown before each peak (and a few after); ``n_tokens`` promoted
    and suppressed tokens are listed.
    """
    if not texts:
        raise ValueError("feature_dashboards needs texts")
    index = _check_features(sae, features)
    acts_name = f"{sae.cfg.splice_hook}.hook_sae_acts_post"
    # per feature, the best n_contexts windows so far: (peak, text index, token ids, activations);
    # only these and the non-zero activations stay resident, not every text's tokens
    best: list[list[tuple[float, int, Tensor, Tensor]]] = [[] for _ in index]
    nonzero: list[list[Tensor]] = [[] for _ in index]
    total_tokens = 0
    bos = getattr(model.tokenizer, "bos_token_id", None)
    with spliced(model, sae):
        for start in range(0, len(texts), texts_per_forward):
            tokens, mask = model.encode(texts[start : start + texts_per_forward])
            tokens, mask = tokens[:, :context], mask[:, :context]
            keep = mask.bool() if bos is None else mask.bool() & (tokens != bos)
            _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=[acts_name])
            acts = cache[acts_name][..., index].float() * keep[..., None]  # [batch, pos, feature]
            peaks, where = acts.max(1)  # [batch, feature]
            lengths = mask.sum(1).tolist()
            for j in range(len(index)):
                found = []
                for row in peaks[:, j].argsort(descending=True)[:n_contexts].tolist():
                    if peaks[row, j] <= 0:
                        break
                    peak = int(where[row, j])
                    lo, hi = max(0, peak - window), min(lengths[row], peak + 4)
                    found.append(
                        (
                            float(peaks[row, j]),
                            start + row,
                            tokens[row, lo:hi].cpu(),
                            acts[row, lo:hi, j].cpu(),
                        )
                    )
                best[j] = sorted(best[j] + found, key=lambda c: (-c[0], c[1]))[:n_contexts]
                values = acts[..., j][keep]
                nonzero[j].append(values[values > 0].cpu())
            total_tokens += int(keep.sum())
    effects = feature_logit_effects(model, sae, index.tolist())
    boards = []
    for j, feature in enumerate(index.tolist()):
        contexts = [
            Context(
                text_index=text,
                tokens=model.to_str_tokens(window_tokens),
                activations=window_acts.tolist(),
                peak=peak,
            )
            for peak, text, window_tokens, window_acts in best[j]
        ]
        values = torch.cat(nonzero[j])
        top, bottom = effects[j].topk(n_tokens), (-effects[j]).topk(n_tokens)
        boards.append(
            FeatureDashboard(
                feature=feature,
                contexts=contexts,
                activations=values,
                frequency=values.numel() / max(total_tokens, 1),
                promoted=_named(model, top.indices, top.values),
                suppressed=_named(model, bottom.indices, -bottom.values),
            )
        )
    return FeatureDashboards(sae.cfg.splice_hook, model.architecture.model_name, total_tokens, boards)


def _named(model, ids: Tensor, values: Tensor) -> list[tuple[str, float]]:
    return list(zip(model.to_str_tokens(ids), values.tolist(), strict=True))
