"""Model diffing: what changed between two models with the same tokenizer (a base model and
a fine-tuned one).

**Crosscoder** (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model
Diffing"; BatchTopK crosscoders: Minder et al. 2025, "Robustly identifying concepts
introduced during chat fine-tuning using crosscoders"). One shared encoder reads both
models' activations at one hook, ``[x_A, x_B]``, and each latent has one decoder direction
per model: ``x̂_A = f @ W_dec_A + b_A``, ``x̂_B = f @ W_dec_B + b_B``. This is exactly an SAE
over the concatenated activations whose decoder rows split in two halves, so
``train_crosscoder`` is ``train_sae`` (streamed, resumable, ``architecture="batchtopk"``) on
an ``ActivationStream`` with ``model_b``. One difference from Minder et al.: ``train_sae``
keeps each latent's whole decoder row ``[d_A, d_B]`` at unit norm instead of weighting
activations by ``||d_A|| + ||d_B||``; the ratio below is unaffected.

A latent's **relative decoder norm** ``||d_B|| / (||d_A|| + ||d_B||)`` is 0 for a latent
only model A uses, 1 for one only B uses, 1/2 for a shared one (Minder et al. 2025 use
``||d_B|| / (||d_A|| + ||d_B||)``; Lindsey et al. the same ratio with max-normalised norms).
Latents near 1 are candidates for what fine-tuning added; their top contexts (read through
both models, ``crosscoder_examples``) and scored explanations say what they are.

**SAE difference** (cheaper, no training): one model's SAE applied to both models'
activations on the same texts; features whose firing changes most (the log-odds statistic
of ``diff_corpora``, held-out replication included) are what moved.

Example:
    >>> cc = train_crosscoder(base, tuned, texts, "blocks.15.hook_resid_post", d_sae=4096, k=32)
    >>> rows = paired_activations(base, tuned, texts, "blocks.15.hook_resid_post")  # forward once,
    >>> cc = train_crosscoder(base, tuned, rows, "blocks.15.hook_resid_post", d_sae=4096, k=32)  # reuse
    >>> cc.latent_table().sort_values("relative_norm").tail(10)        # B-specific latents
    >>> diff = sae_difference(base, tuned, sae, texts)                  # a CorpusDiff
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechinterp.datasets.diff import CorpusDiff, count_splits
from mechinterp.datasets.reading import check_dictionary, check_texts, pad, splits
from mechinterp.explain import (
    ExampleConfig,
    ExplanationScores,
    Unit,
    collect_examples,
    explain_units,
    score_explanations,
)
from mechinterp.explain.chat import ChatModel
from mechinterp.explain.examples import UnitExamples
from mechinterp.explain.explainers import default_explainer
from mechinterp.sae import SAE, ActivationStream, TrainingConfig, train_sae
from mechinterp.sae.activations import stop_layer, typical_tokens

CROSSCODER_FILE = "crosscoder.json"


@dataclass(eq=False)
class Crosscoder:
    """A crosscoder: ``sae`` reads ``[x_A, x_B]`` (width ``2 * d_model``) at ``hook_name`` of
    both models; decoder rows are ``[d_A, d_B]``. ``labels`` name the two models."""

    sae: SAE
    labels: tuple[str, str] = ("A", "B")

    def __post_init__(self) -> None:
        if self.sae.cfg.d_in % 2 or self.sae.cfg.width_out != self.sae.cfg.d_in:
            raise ValueError(
                f"a crosscoder's SAE reads and writes two models' activations side by side (even d_in == d_out); "
                f"got d_in={self.sae.cfg.d_in}, d_out={self.sae.cfg.width_out}"
            )

    @property
    def hook_name(self) -> str:
        return self.sae.hook_name

    @property
    def d_model(self) -> int:
        return self.sae.cfg.d_in // 2

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Latents of concatenated activations ``[x_A, x_B]``."""
        return self.sae.encode(x)

    def decoder_norms(self) -> Float[Tensor, "d_sae variant"]:
        """``[d_sae, 2]``: each latent's decoder norm in model A and in model B."""
        w = self.sae.W_dec.detach().float()
        return torch.stack(
            [w[:, : self.d_model].norm(dim=-1), w[:, self.d_model :].norm(dim=-1)], dim=-1
        ).cpu()

    def relative_norms(self) -> Float[Tensor, " d_sae"]:
        """``||d_B|| / (||d_A|| + ||d_B||)``: 0 = only A uses the latent, 1 = only B, 0.5 = both."""
        norms = self.decoder_norms()
        return norms[:, 1] / norms.sum(-1).clamp_min(1e-12)

    def latent_table(self, *, specific: float = 0.1) -> pd.DataFrame:
        """One row per latent: ``norm_a``, ``norm_b``, ``relative_norm``, ``cosine`` (between
        its two decoder directions) and ``specific_to``: a model's label when the relative
        norm is within ``specific`` of that end, ``shared`` otherwise."""
        norms, ratio = self.decoder_norms(), self.relative_norms()
        w = self.sae.W_dec.detach().float().cpu()
        cosine = torch.nn.functional.cosine_similarity(w[:, : self.d_model], w[:, self.d_model :], dim=-1)
        frame = pd.DataFrame(
            {
                "latent": range(self.d_sae),
                "norm_a": norms[:, 0].numpy(),
                "norm_b": norms[:, 1].numpy(),
                "relative_norm": ratio.numpy(),
                "cosine": cosine.numpy(),
            }
        )
        frame["specific_to"] = "shared"
        frame.loc[frame["relative_norm"] <= specific, "specific_to"] = self.labels[0]
        frame.loc[frame["relative_norm"] >= 1 - specific, "specific_to"] = self.labels[1]
        return frame

    def specific_latents(self, model: str, n: int | None = None, *, specific: float = 0.1) -> list[int]:
        """Latents specific to ``model`` (one of ``labels``), most specific first."""
        if model not in self.labels:
            raise ValueError(f"model must be one of {self.labels}, got {model!r}")
        frame = self.latent_table(specific=specific)
        frame = frame[frame["specific_to"] == model].sort_values(
            "relative_norm", ascending=model == self.labels[0]
        )
        return [int(i) for i in frame["latent"].head(n)]

    def save(self, path: str | Path) -> Path:
        folder = Path(path)
        self.sae.save(folder)
        (folder / CROSSCODER_FILE).write_text(json.dumps({"labels": list(self.labels)}))
        return folder

    @classmethod
    def load(cls, path: str | Path, *, device=None) -> Crosscoder:
        folder = Path(path)
        if not (folder / CROSSCODER_FILE).is_file():
            raise FileNotFoundError(
                f"{folder} has no {CROSSCODER_FILE}; is it a crosscoder saved by Crosscoder.save?"
            )
        labels = tuple(json.loads((folder / CROSSCODER_FILE).read_text())["labels"])
        return cls(SAE.load(folder, device=device), labels)


def paired_activations(
    model_a,
    model_b,
    texts: Sequence[str],
    hook_name: str,
    *,
    max_tokens: int | None = None,
    seed: int = 0,
    **stream_options,
) -> Float[Tensor, "batch d_in"]:
    """Both models' activations at ``hook_name`` over one pass of ``texts``, rows
    ``[x_A, x_B]`` (float32, width ``2 * d_model``), exactly as ``train_crosscoder``'s stream
    serves them (beginning-of-sequence tokens, padding and outlier rows dropped).

    The model forwards are what a crosscoder costs; the optimisation is cheap. Collect the
    rows once and pass the tensor to ``train_crosscoder`` to train for many epochs over it
    (or to try several sizes) without running either model again. ``stream_options`` are
    ``ActivationStream`` fields (``context``, ``texts_per_forward``, ``outlier_ratio``);
    collection stops once ``max_tokens`` rows are in hand.

    Example:
        >>> rows = paired_activations(base, tuned, texts, "blocks.20.hook_resid_post", context=64)
        >>> cc = train_crosscoder(base, tuned, rows, "blocks.20.hook_resid_post", d_sae=1024, k=16,
        ...                       training=TrainingConfig(samples=20 * len(rows), batch_size=512))
    """
    check_texts(texts, "texts")
    stream = ActivationStream(model_a, list(texts), hook_name, model_b=model_b, seed=seed, **stream_options)
    forwards = -(-len(stream.texts) // stream.texts_per_forward)
    rows, total = [], 0
    for _, (block,) in zip(range(forwards), stream.token_batches(), strict=False):
        rows.append(block.float())
        total += block.shape[0]
        if max_tokens is not None and total >= max_tokens:
            break
    return torch.cat(rows)[:max_tokens]


def train_crosscoder(
    model_a,
    model_b,
    texts: Sequence[str] | Float[Tensor, "batch d_in"],
    hook_name: str,
    *,
    d_sae: int,
    k: int = 32,
    labels: tuple[str, str] = ("A", "B"),
    training: TrainingConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    shared_latents: int = 0,
    exclusive_latents: int = 0,
    **stream_options,
) -> Crosscoder:
    """Train a BatchTopK crosscoder on both models' activations at ``hook_name`` over
    ``texts`` with ``train_sae`` (streamed, resumable from ``checkpoint_dir``).

    ``texts`` may instead be rows collected by ``paired_activations`` (``[N, 2 * d_model]``):
    training then cycles through them (``training.samples`` may exceed ``N``: epochs) and
    runs neither model. ``stream_options`` are ``ActivationStream`` fields (``context``,
    ``texts_per_forward``, ``buffer_tokens``, ``outlier_ratio``) for text input.

    ``shared_latents``: the first this many latents are designated shared (one decoder
    vector for both models; ``train_sae``'s ``tied_halves``). Without them a difference that
    always comes with a shared feature (a fine-tune that changes what the model does at
    every comma) is absorbed into that feature's B decoder (relative norm a little over 1/2, a
    "changed" latent) rather than given its own B-specific latent. Tied latents cannot
    absorb it, but free (untied) latents still can.
    ``exclusive_latents``: the next this many latents decode into A only, the ones after
    them into B only (dedicated latents, Jiralerspong & Bricken 2025; their relative norms
    are 0 and 1 by construction, so ask which of them fire, and on what). With
    ``shared_latents + 2 * exclusive_latents == d_sae`` a difference between the models can
    only be written by an exclusive latent.

    Example:
        >>> cc = train_crosscoder(base, tuned, texts, "blocks.3.hook_resid_post", d_sae=512, k=16,
        ...                       training=TrainingConfig(samples=200_000, batch_size=512))
    """
    if isinstance(texts, Tensor):
        source = _checked_rows(model_a, model_b, texts, hook_name, stream_options)
    else:
        source = ActivationStream(
            model_a, list(texts), hook_name, model_b=model_b, seed=seed, **stream_options
        )
    sae = train_sae(
        source,
        d_sae=d_sae,
        architecture="batchtopk",
        k=k,
        seed=seed,
        hook_name=hook_name if isinstance(texts, Tensor) else None,
        training=training or TrainingConfig(),
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        tied_halves=shared_latents,
        exclusive_halves=exclusive_latents,
    )
    return Crosscoder(sae, labels)


def _checked_rows(model_a, model_b, rows: Tensor, hook_name: str, stream_options: dict) -> Tensor:
    if stream_options:
        raise ValueError(
            f"{sorted(stream_options)} configure the activation stream, which precomputed rows do not use; "
            "pass them to paired_activations instead"
        )
    for model in (model_a, model_b):
        model.check_hook_name(hook_name)
    width = model_a.architecture.d_model + model_b.architecture.d_model
    if rows.ndim != 2 or rows.shape[1] != width:
        raise ValueError(
            f"precomputed crosscoder rows must be [N, d_model_a + d_model_b] = [N, {width}] "
            f"(paired_activations); got {tuple(rows.shape)}"
        )
    return rows


class CrosscoderReader:
    """Crosscoder latents on token windows: both models run to the hook, their activations
    side by side are encoded; ``[latent, batch, pos]`` with BOS dropped and padding ``-inf``
    (the ``reader`` of ``collect_examples``). Tokens whose activation norm exceeds
    ``outlier_ratio`` times the batch's median are ``-inf`` too: training
    (``ActivationStream``) drops them, so the crosscoder's latents mean nothing there, and in
    SmolLM2 they would fill every latent's top contexts."""

    def __init__(
        self,
        model_a,
        model_b,
        crosscoder: Crosscoder,
        latents: Sequence[int],
        outlier_ratio: float | None = 10.0,
    ):
        self.models, self.crosscoder, self.latents = (model_a, model_b), crosscoder, list(latents)
        self.outlier_ratio = outlier_ratio
        for model in self.models:
            model.check_hook_name(crosscoder.hook_name)

    @torch.no_grad()
    def __call__(self, windows: Sequence[list[int]]) -> Tensor:
        tokens, _, mask = pad(self.models[0], windows)
        acts = [_activation(m, self.crosscoder.hook_name, tokens, mask) for m in self.models]
        x = torch.cat([acts[0], acts[1].to(acts[0].device)], dim=-1).to(self.crosscoder.sae.device)
        latents = self.crosscoder.encode(x)[..., self.latents].float().permute(2, 0, 1)
        keep = mask[:, 1:].bool().to(x.device)  # content tokens (BOS dropped)
        if self.outlier_ratio is not None:  # the stream's rule, on the same rows
            keep = keep.masked_scatter(keep, typical_tokens(x[:, 1:][keep], self.outlier_ratio))
        return latents[:, :, 1:].masked_fill(~keep[None].to(latents.device), float("-inf"))


def _activation(model, hook_name: str, tokens: Tensor, mask: Tensor) -> Tensor:
    stop = stop_layer(model, hook_name)
    _, cache = model.run_with_cache(
        tokens.to(model.device),
        attention_mask=mask.to(model.device),
        names_filter=[hook_name],
        **({} if stop is None else {"stop_at_layer": stop}),
    )
    return cache[hook_name].float()


def crosscoder_units(crosscoder: Crosscoder, latents: Sequence[int]) -> list[Unit]:
    return [Unit.sae_latent(crosscoder, i, label=f"crosscoder/latent {i}") for i in latents]


def crosscoder_examples(
    model_a,
    model_b,
    crosscoder: Crosscoder,
    latents: Sequence[int],
    corpus: Iterable[str],
    config: ExampleConfig | None = None,
    *,
    outlier_ratio: float | None = 10.0,
) -> list[UnitExamples]:
    """Top, quantile and random contexts of crosscoder ``latents`` (``collect_examples``
    with both models read side by side; tokens whose activation norm exceeds
    ``outlier_ratio`` times the batch median are skipped, as in training).

    Example:
        >>> examples = crosscoder_examples(base, tuned, cc, cc.specific_latents("B", 5), texts)
        >>> examples[0].top[0].marked()
    """
    units = crosscoder_units(crosscoder, latents)
    reader = CrosscoderReader(model_a, model_b, crosscoder, latents, outlier_ratio)
    return collect_examples(model_b, units, corpus, config or ExampleConfig(), progress=False, reader=reader)


@dataclass(frozen=True, kw_only=True)
class ModelDiff:
    """Crosscoder latents specific to either model, their top contexts and (optionally) scored explanations."""

    crosscoder: Crosscoder
    latents: tuple[int, ...]
    examples: tuple[UnitExamples, ...]
    scores: ExplanationScores | None = None

    def to_frame(self) -> pd.DataFrame:
        """The chosen latents' rows of ``latent_table``, their top context and explanation."""
        table = self.crosscoder.latent_table().set_index("latent").loc[list(self.latents)].reset_index()
        table["top_context"] = [e.top[0].marked() if e.top else None for e in self.examples]
        if self.scores is not None:
            scored = self.scores.to_frame()
            scored = scored[scored["method"] == scored["method"].iloc[0]].set_index("label")
            labels = [e.label for e in self.examples]
            table["explanation"] = [scored["explanation"].get(label) for label in labels]
            table["score"] = [
                scored["balanced_accuracy"].get(label) if "balanced_accuracy" in scored else None
                for label in labels
            ]
            table["shuffled_score"] = [
                scored["baseline_balanced_accuracy"].get(label)
                if "baseline_balanced_accuracy" in scored
                else None
                for label in labels
            ]
        return table


def diff_models(
    model_a,
    model_b,
    crosscoder: Crosscoder,
    corpus: Sequence[str],
    *,
    n_latents: int = 10,
    specific: float = 0.1,
    explainer: ChatModel | None = None,
    scorer: ChatModel | None = None,
    explain: bool = False,
    example_config: ExampleConfig | None = None,
) -> ModelDiff:
    """The ``n_latents`` latents most specific to each model, with their contexts in
    ``corpus`` and, with ``explain``, explanations scored against shuffled ones.

    Example:
        >>> diff = diff_models(base, tuned, cc, texts, explain=True, scorer=OpenAIChat(url, name))
        >>> diff.to_frame()
    """
    latents = [
        *crosscoder.specific_latents(crosscoder.labels[1], n_latents, specific=specific),
        *crosscoder.specific_latents(crosscoder.labels[0], n_latents, specific=specific),
    ]
    if not latents:
        raise ValueError(
            f"no latent has a relative decoder norm within {specific} of either end; raise specific or train longer"
        )
    examples = crosscoder_examples(model_a, model_b, crosscoder, latents, corpus, example_config)
    scores = None
    if explain:
        explainer = explainer or default_explainer()
        units = [e.unit for e in examples]
        explained = explain_units(model_b, units, examples=examples, explainer=explainer)
        scores = score_explanations(
            model_b, units, explained, scorer=scorer or explainer, method="detection", examples=examples
        )
    return ModelDiff(crosscoder=crosscoder, latents=tuple(latents), examples=tuple(examples), scores=scores)


def sae_difference(
    model_a,
    model_b,
    sae,
    texts: Iterable[str],
    *,
    labels: tuple[str, str] = ("A", "B"),
    holdout: float = 0.5,
    seed: int = 0,
    context_len: int = 64,
    batch_size: int = 16,
    threshold: float = 0.0,
    prior: float = 10.0,
    progress: bool = True,
) -> CorpusDiff:
    """One SAE (trained on either model) applied to both models' activations on the same
    ``texts``: a ``CorpusDiff`` whose "corpora" are the two models (``to_frame``: firing
    rates, mean activations, log-odds of firing in B vs A, held-out replication).

    Example:
        >>> diff = sae_difference(base, tuned, base_sae, texts, labels=("base", "tuned"))
        >>> diff.to_frame().head()         # features that fire more in the tuned model
    """
    check_texts(texts, "texts")
    for model in (model_a, model_b):
        check_dictionary(model, sae)
    texts = list(texts)
    counts = {}
    for c, model in (("a", model_a), ("b", model_b)):
        accumulators = count_splits(
            model, sae, splits(texts, holdout, seed), threshold, context_len=context_len, batch_size=batch_size,
            progress=progress, description=f"reading with {labels['ab'.index(c)]}",
        )  # fmt: skip
        if accumulators is None:
            raise ValueError("the texts gave no tokens; pass non-empty texts")
        counts["discovery", c], counts["holdout", c] = accumulators[False], accumulators[True]
    return CorpusDiff(
        labels=labels, hook_name=sae.hook_name, counts=counts, prior=prior, meta={"kind": "sae_difference"}
    )
