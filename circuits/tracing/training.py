"""``train_transcoders``: train per-layer or cross-layer transcoders on a model's activations.

A cross-layer transcoder (Ameisen et al. 2025) has, for every layer ``l``, an encoder that reads
what layer ``l``'s MLP reads and decoders that write into the MLP outputs of layers ``l..L-1``;
its loss is the reconstruction error of *every* MLP output at once:

    a_l    = f(x_l @ W_enc[l].T + b_enc[l])                         # x_l: [batch, d_model]
    y_hat  = sum_{l <= l'} a_l @ W_dec[l][:, l' - l] + b_dec[l']    # for each output l'
    loss   = sum_{l'} mean((y_hat_l' - y_l')^2) / L  (+ sparsity)

A per-layer transcoder is the same with one decoder per layer. Sparsity and optimisation are
``train_sae``'s (``mechinterp.sae.train``: the same ``TrainingConfig``, learning-rate schedule and
JumpReLU straight-through estimators): ``topk`` keeps each layer's ``k`` largest features per
token (no penalty); ``jumprelu`` adds ``l0_coefficient`` times the mean L0 per layer. Each
layer's inputs and outputs are scaled to ``E||x||^2 = d_model`` while training, and the scales
are folded into the weights at the end.

Activations stream from the corpus through one forward per group of texts (every layer's
``hook_mlp_in`` and ``hook_mlp_out``; padding and BOS tokens dropped) into a shuffling buffer,
so memory does not grow with the corpus. Checkpoints (``checkpoint_dir``) hold the weights,
optimiser, step and scales; a call with the same folder resumes there (on a fresh shuffle of
the stream, as ``train_sae``'s streams do).

Example:
    >>> tc = train_transcoders(model, load_corpus(), d_tc=1024, kind="clt", k=16,
    ...                        training=TrainingConfig(samples=200_000, batch_size=512))
    >>> graph = trace(model, tc, "The capital of France is")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from circuits.tracing.transcoders import Activation, InputSite, Kind, Transcoder, encoder_input
from mechinterp.sae.activations import content_tokens, shuffled_batches
from mechinterp.sae.train import TrainingConfig, _JumpReLU, _lr, _Step  # one home for the estimators

CHECKPOINT = "transcoder_checkpoint.pt"


def train_transcoders(
    model: Any,
    texts: Sequence[str],
    *,
    d_tc: int,
    kind: Kind = "clt",
    activation: Activation = "topk",
    k: int = 16,
    input_site: InputSite = "mlp_in",
    training: TrainingConfig | None = None,
    context: int = 128,
    texts_per_forward: int = 16,
    buffer_tokens: int = 16384,
    checkpoint_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Transcoder:
    """Transcoders for every MLP of ``model``, trained on ``texts`` (see the module docstring).

    Args:
        d_tc: features per layer. ``kind``: ``"clt"`` or ``"plt"``. ``activation``: ``"topk"``
            (``k`` features per layer and token) or ``"jumprelu"`` (``training.l0_coefficient``).
        input_site: what the encoders read: ``"mlp_in"`` or ``"mlp_normalized"`` (``ln2`` of it).
        training: samples, batch size, learning rate, ... (``mechinterp.sae.TrainingConfig``;
            default: its defaults).
        context: tokens per text (at most the model's context); ``texts_per_forward`` texts share one forward; the shuffling
            buffer holds ``buffer_tokens`` tokens and serves its first half before refilling.
        checkpoint_dir: save checkpoints there and resume from the last one.

    Example:
        >>> tc = train_transcoders(model, texts, d_tc=64, kind="plt", k=4,
        ...                        training=TrainingConfig(samples=20_000, batch_size=256))
    """
    training = TrainingConfig() if training is None else training
    if activation not in ("topk", "jumprelu"):
        raise ValueError(
            f"activation must be 'topk' or 'jumprelu' (relu CLTs are not trained here), got {activation!r}"
        )
    if not texts:
        raise ValueError("train_transcoders needs at least one text")
    device = model.device
    arch = model.architecture
    context = min(context, arch.n_ctx)
    stream = _activation_batches(
        model, texts, input_site, training.batch_size, context, texts_per_forward, buffer_tokens, seed
    )
    first = next(stream)
    scales_in = (arch.d_model / first[0].pow(2).sum(-1).mean(0)).sqrt()  # [layer]
    scales_out = (arch.d_model / first[1].pow(2).sum(-1).mean(0).clamp(min=1e-12)).sqrt()
    dictionary = _Dictionary(arch.n_layers, arch.d_model, d_tc, kind, activation, k, training, seed).to(
        device
    )
    with torch.no_grad():
        dictionary.b_dec.copy_((first[1] * scales_out[:, None]).mean(0))
    optimizer = torch.optim.Adam(dictionary.parameters(), lr=training.lr, betas=(0.9, 0.999))
    settings = {"training": asdict(training), "d_tc": d_tc, "kind": kind, "activation": activation, "k": k}
    settings |= {"input_site": input_site, "n_layers": arch.n_layers, "d_model": arch.d_model}
    checkpoint = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    step = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state["settings"] != settings:
            raise ValueError(
                f"{checkpoint} was written by a run with other settings; use another checkpoint_dir"
            )
        dictionary.load_state_dict(state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        step, scales_in, scales_out = state["step"], state["scales_in"], state["scales_out"]
    with tqdm(
        total=training.steps, initial=step, desc=f"training {kind} transcoders", disable=not progress
    ) as bar:
        while step < training.steps:
            x, y = next(stream)
            x, y = x * scales_in[:, None], y * scales_out[:, None]
            for group in optimizer.param_groups:
                group["lr"] = _lr(training, step)
            loss, mse, l0 = dictionary.loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(mse=f"{mse.item():.4f}", l0=f"{l0.item():.1f}")
            if checkpoint is not None and (step % training.checkpoint_every == 0 or step == training.steps):
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                state = {"settings": settings, "weights": dictionary.state_dict(), "step": step}
                state |= {
                    "optimizer": optimizer.state_dict(),
                    "scales_in": scales_in,
                    "scales_out": scales_out,
                }
                torch.save(state, checkpoint.with_suffix(".tmp"))
                checkpoint.with_suffix(".tmp").replace(checkpoint)
    return dictionary.transcoder(scales_in, scales_out, input_site)


@torch.no_grad()
def unexplained_variance(
    model: Any, transcoders: Transcoder, texts: Sequence[str], context: int = 64
) -> float:
    """The share of the MLP outputs' variance (summed over layers and tokens of ``texts``, cut
    to ``context`` tokens) that the transcoders' reconstruction leaves unexplained (FVU).

    Example:
        >>> unexplained_variance(model, tc, load_corpus(split="test", max_texts=32))
        0.31
    """
    tokens, mask = model.encode(list(texts))
    tokens, mask = tokens[:, :context], mask[:, :context]
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    keep = mask.bool()
    acts = [
        transcoders.encode(
            layer, transcoders.transcoder_input(model, layer, cache[f"blocks.{layer}.hook_mlp_in"])[keep]
        )
        for layer in range(transcoders.n_layers)
    ]
    residual = total = 0.0
    for layer in range(transcoders.n_layers):
        y = cache[f"blocks.{layer}.hook_mlp_out"][keep]
        residual += float((transcoders.decode(layer, acts) - y).pow(2).sum())
        total += float((y - y.mean(0)).pow(2).sum())
    return residual / total


class _Dictionary(nn.Module):
    """The trainable weights, in the scaled space; ``transcoder`` folds the scales back."""

    def __init__(self, n_layers, d_model, d_tc, kind, activation, k, training: TrainingConfig, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.kind, self.activation, self.k, self.training_cfg = kind, activation, k, training
        n_outs = [n_layers - layer if kind == "clt" else 1 for layer in range(n_layers)]
        decoders = []
        for n_out in n_outs:
            w = torch.randn(d_tc, n_out, d_model, generator=generator)
            decoders.append(nn.Parameter(w / w.norm(dim=-1, keepdim=True) / n_out**0.5))
        self.W_dec = nn.ParameterList(decoders)
        # the encoder starts at the transpose of each layer's own decoder (as train_sae's)
        self.W_enc = nn.Parameter(
            torch.stack(
                [w[:, 0].detach().clone() * n_out**0.5 for w, n_out in zip(decoders, n_outs, strict=True)]
            )
        )
        self.b_enc = nn.Parameter(torch.zeros(n_layers, d_tc))
        self.b_dec = nn.Parameter(torch.zeros(n_layers, d_model))
        self.threshold = nn.Parameter(torch.full((n_layers, d_tc), training.initial_threshold))

    def features(self, x: Float[Tensor, "batch layer d_model"]) -> Float[Tensor, "batch layer d_sae"]:
        pre = torch.einsum("bld,lfd->blf", x, self.W_enc) + self.b_enc
        if self.activation == "topk":
            values, indices = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu())
        return _JumpReLU.apply(pre, self.threshold, self.training_cfg.bandwidth)

    def reconstruct(self, acts: Float[Tensor, "batch layer d_sae"]) -> Float[Tensor, "batch layer d_model"]:
        out = self.b_dec.expand(acts.shape[0], -1, -1)
        parts = [out]
        for layer, w in enumerate(self.W_dec):
            written = torch.einsum("bf,fod->bod", acts[:, layer], w)  # [batch, n_out, d_model]
            parts.append(nn.functional.pad(written, (0, 0, layer, len(self.W_dec) - layer - w.shape[1])))
        return torch.stack(parts).sum(0)

    def loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        acts = self.features(x)
        mse = (self.reconstruct(acts) - y).pow(2).mean()
        l0 = (acts > 0).float().sum(-1).mean()
        if self.activation == "topk":
            return mse, mse, l0
        pre = torch.einsum("bld,lfd->blf", x, self.W_enc) + self.b_enc
        fired = _Step.apply(pre, self.threshold, self.training_cfg.bandwidth).sum(-1).mean()
        return mse + self.training_cfg.l0_coefficient * fired, mse, l0

    @torch.no_grad()
    def transcoder(self, scales_in: Tensor, scales_out: Tensor, input_site: InputSite) -> Transcoder:
        """Unscaled: ``pre = (x s_in) W_enc^T + b``, ``y = y_hat / s_out``."""
        n_layers = len(self.W_dec)
        W_enc = [self.W_enc[layer] * scales_in[layer] for layer in range(n_layers)]
        W_dec = [w / scales_out[layer : layer + w.shape[1], None] for layer, w in enumerate(self.W_dec)]
        return Transcoder(
            W_enc,
            list(self.b_enc),
            W_dec,
            list(self.b_dec / scales_out[:, None]),
            activation=self.activation,
            threshold=list(self.threshold) if self.activation == "jumprelu" else None,
            k=self.k if self.activation == "topk" else None,
            input_site=input_site,
        )


def _activation_batches(
    model: Any,
    texts: Sequence[str],
    input_site: InputSite,
    batch_size: int,
    context: int,
    texts_per_forward: int,
    buffer_tokens: int,
    seed: int,
) -> Iterator[tuple[Float[Tensor, "batch layer d_model"], Float[Tensor, "batch layer d_model"]]]:
    """Endless shuffled batches ``(encoder inputs, MLP outputs)`` of every layer, ``[batch,
    layer, d_model]`` each, from one forward per group of texts (cycled) through a buffer."""
    n_layers = model.architecture.n_layers
    names = [f"blocks.{layer}.hook_mlp_{which}" for which in ("in", "out") for layer in range(n_layers)]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()

    def forwards() -> Iterator[Tensor]:
        while True:
            for start in range(0, len(order), texts_per_forward):
                tokens, mask = model.encode([texts[i] for i in order[start : start + texts_per_forward]])
                tokens, mask = tokens[:, :context], mask[:, :context]
                with torch.no_grad():
                    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
                    inputs = [
                        encoder_input(model, layer, cache[names[layer]], input_site)
                        for layer in range(n_layers)
                    ]
                    outputs = [cache[names[n_layers + layer]] for layer in range(n_layers)]
                # [text, pos, 2, layer, d_model] -> the kept tokens' rows [token, 2, layer, d_model]
                pairs = torch.stack([torch.stack(inputs, 2), torch.stack(outputs, 2)], 2)
                yield pairs[content_tokens(model, tokens, mask)].float()

    for rows in shuffled_batches(forwards(), batch_size, buffer_tokens, seed=seed + 1):
        yield rows[:, 0], rows[:, 1]
