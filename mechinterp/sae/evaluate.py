"""``evaluate_sae``: how well an SAE reconstructs its hook and how much the model cares.

On held-out text, over real (non-padding, non-BOS) tokens:

- **explained variance** ``1 - FVU``, ``FVU = sum ||x - x̂||^2 / sum ||x - mean x||^2``, over
  non-BOS tokens whose input norm is at most ``outlier_ratio`` times the batch median (as in
  training; ``n_outliers`` counts the others; ``None`` keeps every token, BOS included);
- **L0**: mean number of active latents per token; **dead fraction**: latents that never fire;
- **CE loss recovered** (the standard downstream check): next-token cross-entropy of the
  clean model, of the model with the reconstruction in place of the activation, and of the
  model with the activation zeroed; recovered ``= (CE_zero - CE_spliced) / (CE_zero - CE_clean)``
  (1 = the SAE loses nothing, 0 = as bad as deleting the activation). Both interventions
  act on the tokens the statistics count: BOS and outlier tokens keep their activations
  (``outlier_ratio=None`` replaces every token, BOS included).

Example:
    >>> result = evaluate_sae(model, sae, load_corpus("default", "test", max_texts=200))
    >>> result.explained_variance, result.l0, result.ce_recovered
    >>> from mechinterp.plotting import sae_evaluation_figure; sae_evaluation_figure(result)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from mechinterp.sae.model import SAE


@dataclass(frozen=True, eq=False)
class SAEEvaluation:
    """Evaluation numbers of one SAE; ``latent_frequency`` ``[d_sae]`` is the fraction of
    tokens on which each latent fires."""

    hook_name: str
    n_tokens: int
    n_outliers: int
    explained_variance: float
    mse: float
    l0: float
    dead_fraction: float
    ce_clean: float
    ce_spliced: float
    ce_zero_ablated: float
    latent_frequency: Float[Tensor, " d_sae"]

    @property
    def fvu(self) -> float:
        return 1 - self.explained_variance

    @property
    def ce_recovered(self) -> float:
        return (self.ce_zero_ablated - self.ce_spliced) / (self.ce_zero_ablated - self.ce_clean)

    def summary(self) -> dict[str, float | int | str]:
        """The scalar numbers (for JSON, tables, reports)."""
        out = {k: v for k, v in asdict(self).items() if k != "latent_frequency"}
        return out | {"fvu": self.fvu, "ce_recovered": self.ce_recovered}

    def save(self, path: str | Path) -> None:
        """Write the summary as JSON."""
        Path(path).write_text(json.dumps(self.summary(), indent=2))


@torch.no_grad()
def evaluate_sae(
    model,
    sae: SAE,
    texts: list[str],
    *,
    context: int = 128,
    texts_per_forward: int = 16,
    outlier_ratio: float | None = 10.0,
) -> SAEEvaluation:
    """Evaluate ``sae`` (spliced at its hook) on ``texts``; see the module docstring."""
    if not texts:
        raise ValueError("evaluate_sae needs held-out texts")
    cfg = sae.cfg
    total = {"sq_err": 0.0, "sq_dev": 0.0, "sum": 0.0, "sumsq": 0.0, "l0": 0.0, "n": 0}
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    ce_tokens = outliers = 0
    fired = torch.zeros(cfg.d_sae, device=sae.device)
    out_hook = cfg.splice_hook
    for start in range(0, len(texts), texts_per_forward):
        tokens, mask = model.encode(texts[start : start + texts_per_forward])
        tokens, mask = tokens[:, :context], mask[:, :context]
        keep = mask.bool()
        bos = getattr(model.tokenizer, "bos_token_id", None)
        if bos is not None:
            keep &= tokens != bos
        n_pairs = int((mask[:, :-1] * mask[:, 1:]).sum())
        names = sorted({cfg.hook_name, out_hook})
        loss, cache = model.run_with_cache(
            tokens, attention_mask=mask, names_filter=names, return_type="loss"
        )
        ce["clean"] += loss.item() * n_pairs
        replace = mask.bool()  # the tokens the SAE stands in for; the others keep their activations
        if outlier_ratio is not None:
            norms = cache[cfg.hook_name].flatten(2).float().norm(dim=-1)
            replace = keep & (norms <= outlier_ratio * norms[keep].median())
            outliers += int((keep & ~replace).sum())
        x = cache[cfg.hook_name][replace].flatten(1).to(sae.dtype)
        y = cache[out_hook][replace].flatten(1).to(sae.dtype)
        acts, recon = sae.encode(x), sae(x)
        total["sq_err"] += (recon - y).pow(2).sum().item()
        total["sum"] += y.sum(0)
        total["sumsq"] += y.pow(2).sum().item()
        total["n"] += y.shape[0]
        total["l0"] += (acts > 0).sum().item()
        fired += (acts > 0).sum(0)
        kept = (~replace)[..., None].to(model.device)

        def keep_error(error: Tensor, hook, kept=kept) -> Tensor:  # x̂ where replaced, x elsewhere
            return error * kept

        def zero(activation: Tensor, hook, kept=kept) -> Tensor:
            return activation * kept.reshape(*kept.shape, *[1] * (activation.ndim - 3))

        with (
            model.saes([sae], use_error_term=True),
            model.hooks(fwd_hooks=[(f"{out_hook}.hook_sae_error", keep_error)]),
        ):
            ce["spliced"] += model(tokens, attention_mask=mask, return_type="loss").item() * n_pairs
        with model.hooks(fwd_hooks=[(out_hook, zero)]):
            ce["zero"] += model(tokens, attention_mask=mask, return_type="loss").item() * n_pairs
        ce_tokens += n_pairs
    n = total["n"]
    mean = total["sum"] / n
    sq_dev = total["sumsq"] - n * mean.pow(2).sum().item()
    return SAEEvaluation(
        hook_name=out_hook,
        n_tokens=n,
        n_outliers=outliers,
        explained_variance=1 - total["sq_err"] / sq_dev,
        mse=total["sq_err"] / (n * y.shape[-1]),
        l0=total["l0"] / n,
        dead_fraction=(fired == 0).float().mean().item(),
        ce_clean=ce["clean"] / ce_tokens,
        ce_spliced=ce["spliced"] / ce_tokens,
        ce_zero_ablated=ce["zero"] / ce_tokens,
        latent_frequency=(fired / n).cpu(),
    )
