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
    peaks, peak_pos, token_rows, act_rows, nonzero = [], [], [], [], [[] for _ in index]
    total_tokens = 0
    bos = getattr(model.tokenizer, "bos_token_id", None)
    with spliced(model, sae):
        for start in range(0, len(texts), texts_per_forward):
            tokens, mask = model.encode(texts[start : start + texts_per_forward])
            tokens, mask = tokens[:, :context], mask[:, :context]
            keep = mask.bool() if bos is None else mask.bool() & (tokens != bos)
            _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=[acts_name])
            acts = cache[acts_name][..., index].float() * keep[..., None]  # [batch, pos, feature]
            best, where = acts.max(1)
            peaks.append(best.cpu())
            peak_pos.append(where.cpu())
            for row in range(tokens.shape[0]):
                n = int(mask[row].sum())
                token_rows.append(tokens[row, :n].cpu())
                act_rows.append(acts[row, :n].cpu())
            for j in range(len(index)):
                values = acts[..., j][keep]
                nonzero[j].append(values[values > 0].cpu())
            total_tokens += int(keep.sum())
    peaks_t, pos_t = torch.cat(peaks), torch.cat(peak_pos)
    effects = feature_logit_effects(model, sae, index.tolist())
    boards = []
    for j, feature in enumerate(index.tolist()):
        order = peaks_t[:, j].argsort(descending=True)[:n_contexts]
        contexts = []
        for text in order.tolist():
            if peaks_t[text, j] <= 0:
                break
            peak = int(pos_t[text, j])
            lo, hi = max(0, peak - window), min(len(token_rows[text]), peak + 4)
            contexts.append(
                Context(
                    text_index=text,
                    tokens=model.to_str_tokens(token_rows[text][lo:hi]),
                    activations=act_rows[text][lo:hi, j].tolist(),
                    peak=float(peaks_t[text, j]),
                )
            )
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
