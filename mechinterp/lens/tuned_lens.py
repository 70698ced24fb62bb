"""The tuned lens (Belrose et al. 2023): a learned affine translator per layer.

The logit lens decodes ``resid_l`` as if it were the final residual stream. The tuned lens
first maps it with ``h -> h + h @ A_l + b_l`` (``A_l``, ``b_l`` start at zero, so training
starts from the logit lens), then decodes through the model's final norm and unembedding;
each translator is trained to minimise KL(final distribution || lens distribution). All
layers train together as one batched optimisation (their losses simply add).

Memory does not grow with the corpus: each training step runs the model on the next
``texts_per_step`` texts (reshuffled each pass) and keeps only ``tokens_per_step`` of their
tokens, whose final log-probabilities are the targets; ``evaluate`` streams its texts in
batches and averages per token. (SmolLM2-135M on the CPU, 2,000 texts: peak RSS 2.6 GB over
20 steps, 2.5 GB with 20,000 texts; ``benchmarks/bench_tuned_lens_memory.py``.)

Training text: by default the offline English corpus ``load_corpus("default", "train")``
(WordNet glosses and standard-library docstrings; ``mechinterp.data.corpus``), so evaluating
on ``load_corpus("default", "test")`` (fortunes) measures transfer to another source; pass
your own texts for other domains. ``stdlib_corpus()`` gives the docstrings alone.

Example:
    >>> lens = TunedLens.train(model, steps=100)             # default corpus, train split
    >>> lens.evaluate(model, held_out)      # mean KL per layer, tuned vs logit lens
    >>> lens.save("runs/tuned_lens"); TunedLens.load("runs/tuned_lens", model)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from mechinterp.data.corpus import load_corpus

FORMAT_VERSION = 1


def _residuals(model, texts: list[str], max_tokens: int) -> tuple[Tensor, Tensor]:
    """Residual streams entering every layer ``[layer, token, d_model]`` and the final
    logits ``[token, d_vocab]`` of the real tokens of ``texts`` (one forward)."""
    tokens, mask = model.encode(texts)
    tokens, mask = tokens[:, :max_tokens], mask[:, :max_tokens]
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.architecture.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
    keep = mask.bool()
    residuals = torch.stack([cache[name][keep] for name in names])
    return residuals, logits[keep]


def _text_batches(texts: list[str], size: int, generator: torch.Generator) -> Iterator[list[str]]:
    """Batches of ``size`` texts, reshuffled each pass through ``texts``, forever."""
    while True:
        order = torch.randperm(len(texts), generator=generator).tolist()
        for start in range(0, len(order), size):
            yield [texts[i] for i in order[start : start + size]]


@dataclass(eq=False)
class TunedLens:
    """Translators ``weight`` ``[layer, d_model, d_model]`` and ``bias`` ``[layer, d_model]``."""

    weight: Float[Tensor, "layer d_model d_model"]
    bias: Float[Tensor, "layer d_model"]
    model_name: str

    def decode(
        self, model, residual: Float[Tensor, "*batch d_model"], layer: int
    ) -> Float[Tensor, "*batch d_vocab"]:
        """Log-probabilities of the lens at ``layer`` for residual streams ``[..., d_model]``."""
        translated = residual + residual @ self.weight[layer] + self.bias[layer]
        return model.unembed(model.ln_final(translated)).float().log_softmax(-1)

    @classmethod
    def train(
        cls,
        model,
        texts: list[str] | None = None,
        *,
        steps: int = 200,
        tokens_per_step: int = 64,
        lr: float = 1e-3,
        max_tokens: int = 64,
        texts_per_step: int = 8,
        seed: int = 0,
        progress: bool = True,
    ) -> TunedLens:
        """Fit every layer's translator on ``texts`` (default: 2,000 texts of the default
        corpus's training split) with full-vocabulary KL and Adam.

        Each step runs the model (without gradients) on the next ``texts_per_step`` texts
        and trains on ``tokens_per_step`` tokens drawn from them, so peak memory depends on
        these two sizes and not on ``len(texts)``.
        """
        if texts is None:
            texts = load_corpus("default", "train", max_texts=2000)
        if not texts:
            raise ValueError("the tuned lens needs training texts")
        arch = model.architecture
        weight = torch.zeros(
            arch.n_layers, arch.d_model, arch.d_model, device=model.device, requires_grad=True
        )
        bias = torch.zeros(arch.n_layers, arch.d_model, device=model.device, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=lr)
        generator = torch.Generator().manual_seed(seed)
        batches = _text_batches(list(texts), texts_per_step, generator)
        frozen = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            for _ in tqdm(range(steps), desc="training tuned lens", disable=not progress):
                residuals, logits = _residuals(model, next(batches), max_tokens)
                rows = torch.randint(0, residuals.shape[1], (tokens_per_step,), generator=generator)
                h = residuals[:, rows.to(residuals.device)]
                target = logits[rows.to(logits.device)].float().log_softmax(-1)
                del residuals, logits
                translated = h + torch.bmm(h, weight) + bias[:, None]
                log_probs = model.unembed(model.ln_final(translated)).float().log_softmax(-1)
                kl = (target.exp() * (target - log_probs)).sum(-1).mean(-1)  # [layer]
                optimizer.zero_grad()
                kl.sum().backward()
                optimizer.step()
        finally:
            for p, requires in zip(model.parameters(), frozen, strict=True):
                p.requires_grad_(requires)
        return cls(weight.detach(), bias.detach(), arch.model_name)

    @torch.no_grad()
    def evaluate(
        self, model, texts: list[str], *, max_tokens: int = 64, texts_per_forward: int = 8
    ) -> dict[str, Float[Tensor, " layer"]]:
        """Mean KL(final || lens) per layer over the tokens of ``texts``, for this lens and
        the logit lens (texts streamed ``texts_per_forward`` at a time)."""
        if not texts:
            raise ValueError("evaluate needs at least one text")
        sums = torch.zeros(2, self.weight.shape[0], dtype=torch.float64)
        count = 0
        for start in range(0, len(texts), texts_per_forward):
            residuals, logits = _residuals(model, list(texts[start : start + texts_per_forward]), max_tokens)
            final = logits.float().log_softmax(-1)
            for layer in range(residuals.shape[0]):
                for row, log_probs in enumerate(
                    (
                        self.decode(model, residuals[layer], layer),
                        model.unembed(model.ln_final(residuals[layer])).float().log_softmax(-1),
                    )
                ):
                    sums[row, layer] += float((final.exp() * (final - log_probs)).sum())
            count += final.shape[0]
        means = (sums / count).float()
        return {"tuned": means[0], "logit": means[1]}

    def save(self, path: str | Path) -> None:
        """``PATH.safetensors`` + ``PATH.json`` (model name, layer count, width)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weight": self.weight.cpu().contiguous(), "bias": self.bias.cpu().contiguous()},
            str(path.with_suffix(".safetensors")),
        )
        info = {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "n_layers": self.weight.shape[0],
            "d_model": self.weight.shape[1],
        }
        path.with_suffix(".json").write_text(json.dumps(info, indent=1))

    @classmethod
    def load(cls, path: str | Path, model) -> TunedLens:
        """Read a saved lens, checking it fits ``model``'s layer count and width."""
        path = Path(path)
        info = json.loads(path.with_suffix(".json").read_text())
        arch = model.architecture
        if (info["n_layers"], info["d_model"]) != (arch.n_layers, arch.d_model):
            raise ValueError(
                f"{path} is a tuned lens for {info['model_name']!r} ({info['n_layers']} layers, d_model "
                f"{info['d_model']}), not for {arch.model_name!r} ({arch.n_layers} layers, d_model "
                f"{arch.d_model})"
            )
        tensors = load_file(str(path.with_suffix(".safetensors")))
        return cls(tensors["weight"].to(model.device), tensors["bias"].to(model.device), info["model_name"])
