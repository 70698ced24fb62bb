"""``TokenAttribution``: one score per input token (or per token and head), with its tokens,
the objective it explains and, for integrated gradients, how well the scores add up.

Example:
    >>> attribution = attribute_tokens(model, "The Eiffel Tower is in the city of", correct=" Paris")
    >>> attribution.values.shape                  # [batch, pos]
    >>> attribution.completeness                  # sum of scores vs f(x) - f(baseline)
    >>> attribution.to_dataframe().head()
    >>> attribution.save("runs/paris_ig")         # paris_ig.safetensors + paris_ig.json
    >>> from mechinterp.plotting import token_attribution_heatmap
    >>> token_attribution_heatmap(attribution).show()   # plotly heatmap over the tokens
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from mechinterp.dims import AttentionMask, PerExample
from mechinterp.patching.compare import spearman

FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class Completeness:
    """``total``: the sum of each example's attributions; ``change``: ``f(x) - f(baseline)``
    (``[batch]`` each). Integrated gradients makes them equal in the limit of many steps."""

    total: PerExample
    change: PerExample

    @property
    def gap(self) -> PerExample:
        """``|total - change| / |change|`` per example (relative to the change explained;
        ``inf`` or ``nan`` for an example whose input and baseline score the same)."""
        return (self.total - self.change).abs() / self.change.abs()

    @property
    def max_gap(self) -> float:
        return float(self.gap.max())

    def __repr__(self) -> str:
        return (
            f"Completeness(sum of attributions {self.total.tolist()}, f(x) - f(baseline) "
            f"{self.change.tolist()}, relative gap {[round(g, 5) for g in self.gap.tolist()]})"
        )


@dataclass(frozen=True, eq=False, kw_only=True)
class TokenAttribution:
    """Attributes:
    values: ``[batch, pos]`` scores (``[batch, pos, head]`` for a head site); zero at padding.
    tokens: each example's string tokens (padding included, as the model's pad token).
    token_ids, attention_mask: ``[batch, pos]`` (1 = real token).
    method: ``integrated_gradients``, ``gradient_x_input``, ``saliency``, ``occlusion`` or
        ``attention_rollout``.
    site: the hook the scores are attached to (``hook_embed`` = input embeddings).
    score: the objective on the input ``[batch]`` (``None`` for attention rollout).
    completeness: sum of scores vs ``f(x) - f(baseline)`` (integrated gradients only).
    metadata: objective, baseline, steps, rule, model.
    """

    values: Float[Tensor, "batch pos *head"]
    tokens: list[list[str]]
    token_ids: Int[Tensor, "batch pos"]
    attention_mask: AttentionMask
    method: str
    site: str = "hook_embed"
    score: PerExample | None = None
    completeness: Completeness | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.shape[:2] != self.token_ids.shape:
            raise ValueError(
                f"values {tuple(self.values.shape)} do not match tokens {tuple(self.token_ids.shape)}"
            )

    @property
    def axes(self) -> tuple[str, ...]:
        """``("batch", "pos")``, or with a third axis ``"head"`` for head sites."""
        return ("batch", "pos", "head")[: self.values.ndim]

    def to_dataframe(self):
        """One row per real token (and head): example, pos, token, [head,] value."""
        import pandas as pd

        records = []
        for example, row in enumerate(self.values.float().cpu()):
            for pos in self.attention_mask[example].nonzero()[:, 0].tolist():
                base = {"example": example, "pos": pos, "token": self.tokens[example][pos]}
                if row.ndim == 1:
                    records.append({**base, "value": float(row[pos])})
                else:
                    records += [{**base, "head": h, "value": float(v)} for h, v in enumerate(row[pos])]
        return pd.DataFrame.from_records(records)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``PATH.safetensors`` (tensors) and ``PATH.json`` (tokens, method, metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"values": self.values, "token_ids": self.token_ids, "attention_mask": self.attention_mask}
        if self.score is not None:
            tensors["score"] = self.score
        if self.completeness is not None:
            tensors["completeness_total"] = self.completeness.total
            tensors["completeness_change"] = self.completeness.change
        tensor_path, json_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tensor_path))
        info = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "site": self.site,
            "tokens": self.tokens,
            "metadata": self.metadata,
        }
        json_path.write_text(json.dumps(info, indent=1))
        return tensor_path, json_path

    @classmethod
    def load(cls, path: str | Path) -> TokenAttribution:
        """Read an attribution written by ``save``."""
        path = Path(path)
        tensors = load_file(str(path.with_suffix(".safetensors")))
        info = json.loads(path.with_suffix(".json").read_text())
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported TokenAttribution format {info.get('format_version')!r}")
        completeness = None
        if "completeness_total" in tensors:
            completeness = Completeness(tensors["completeness_total"], tensors["completeness_change"])
        return cls(
            values=tensors["values"],
            tokens=info["tokens"],
            token_ids=tensors["token_ids"],
            attention_mask=tensors["attention_mask"],
            method=info["method"],
            site=info["site"],
            score=tensors.get("score"),
            completeness=completeness,
            metadata=info["metadata"],
        )


@dataclass(frozen=True, eq=False)
class MethodComparison:
    """Several methods' attributions of the same input and objective, side by side.

    Example:
        >>> comparison = compare_methods(model, prompt, correct=" Paris")
        >>> comparison.agreement()           # Spearman correlation of every pair of methods
        >>> method_comparison_heatmap(comparison).show()   # mechinterp.plotting: a row per method
    """

    attributions: dict[str, TokenAttribution]

    def __post_init__(self) -> None:
        shapes = {name: tuple(a.values.shape) for name, a in self.attributions.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"attributions to compare differ in shape: {shapes}")

    def agreement(self, example: int = 0):
        """Spearman rank correlation between every pair of methods over the real tokens of
        ``example`` (a ``pandas`` frame, methods x methods)."""
        import pandas as pd

        names = list(self.attributions)
        real = self.attributions[names[0]].attention_mask[example].bool().cpu()
        flat = {n: a.values[example].float().cpu()[real].flatten() for n, a in self.attributions.items()}
        matrix = [[spearman(flat[a], flat[b]) for b in names] for a in names]
        return pd.DataFrame(matrix, index=names, columns=names)
