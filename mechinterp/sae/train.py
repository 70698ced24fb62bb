"""``train_sae``: train a sparse autoencoder or transcoder on a tensor or a model's activations.

Losses (reconstruction is the mean squared error per element, on inputs scaled so that
``E||x||^2 = d_in``; the scale is folded back into the weights at the end):

- ``topk`` (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): MSE plus the
  **AuxK** loss: latents that have not fired for ``dead_after`` samples reconstruct the
  residual error with their own top-``aux_k``, weighted ``aux_coefficient`` (1/32).
  This revives dead latents.
- ``batchtopk`` (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"): the ``k * batch``
  largest latent activations of the whole batch are kept, so tokens differ in how many
  latents they use; AuxK as for ``topk``. The threshold ``theta`` (a running mean of the
  smallest kept activation per batch) replaces the batch at inference: the trained SAE is
  returned as a ``jumprelu`` SAE with every threshold ``theta``.
- ``jumprelu`` (Rajamanoharan et al. 2024, "Jumping Ahead"): MSE plus ``l0_coefficient``
  times L0, differentiated through the thresholds with straight-through estimators of
  kernel width ``bandwidth``.
- ``relu`` (Bricken et al. 2023): MSE plus ``l1_coefficient`` times the L1 norm of the latents.
- ``gated`` (Rajamanoharan et al. 2024, "Improving dictionary learning with gated SAEs"):
  MSE, L1 on the gate's ReLU, and the auxiliary reconstruction from the gate path.

Decoder rows are kept at unit norm (the gradient's component along each row is removed
before a step and the rows renormalised after), so activations measure how much of a
direction is present. ``tied_halves`` latents (crosscoders: designated shared latents,
Mishra-Sharma et al. 2025, "Insights on Crosscoder Model Diffing"; Jiralerspong & Bricken
2025, "Cross-Architecture Model Diffing with Crosscoders") decode one vector into both halves
of the output: their two half-gradients are averaged and the halves re-averaged after every
step, so a difference between the two halves can only be carried by the other latents. The
next ``exclusive_halves`` latents write only the first half, the ``exclusive_halves`` after
them only the second (the other half is held at zero): Jiralerspong & Bricken's dedicated
latents. Adam, linear warm-up and a linear decay over the last 20% of steps.
The decoder bias starts at the data mean; the encoder at the decoder's transpose.

Checkpoints (``checkpoint_dir``) hold the SAE, optimiser, step and firing statistics; a call
with the same directory resumes from the last one. Tensor sources resume exactly (batches
follow from the seed and step); activation streams resume on a fresh shuffle.

Example:
    >>> sae = train_sae(activations, d_sae=512, k=8)                      # tensor [N, d_in]
    >>> stream = ActivationStream(model, load_corpus(), "blocks.15.hook_resid_post")
    >>> sae = train_sae(stream, d_sae=4608, k=32, training=TrainingConfig(samples=2_000_000))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from mechinterp.sae.activations import ActivationStream
from mechinterp.sae.model import SAE, Architecture, SAEConfig, from_tensors

CHECKPOINT = "checkpoint.pt"
# activation rows (transcoders: input and output rows), or a stream of them
Source = (
    Float[Tensor, "batch d_in"]
    | tuple[Float[Tensor, "batch d_in"], Float[Tensor, "batch d_out"]]
    | ActivationStream
)


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """How to train (what to train is ``train_sae``'s arguments).

    Attributes:
        samples: training rows (tokens) seen in total.
        batch_size: rows per step.
        lr: Adam learning rate (after ``warmup_steps``; decays linearly to 0 over the last
            ``decay_fraction`` of steps).
        l1_coefficient: ``relu`` / ``gated`` sparsity penalty.
        l0_coefficient: ``jumprelu`` sparsity penalty; ``bandwidth``: its estimator's width;
            ``initial_threshold``: its thresholds' start.
        aux_k: ``topk`` AuxK latents (default ``d_in // 2``); ``aux_coefficient``: its weight.
        dead_after: a latent that has not fired for this many samples counts as dead.
        checkpoint_every: steps between checkpoints (with ``checkpoint_dir``).
    """

    samples: int = 1_000_000
    batch_size: int = 1024
    lr: float = 3e-3
    warmup_steps: int = 20
    decay_fraction: float = 0.2
    l1_coefficient: float = 3.0
    l0_coefficient: float = 3e-3
    bandwidth: float = 0.05
    initial_threshold: float = 0.1
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_after: int = 100_000
    checkpoint_every: int = 500

    @property
    def steps(self) -> int:
        return max(1, self.samples // self.batch_size)


@dataclass(frozen=True)
class StepInfo:
    """What a ``callback`` sees after each step (losses on the scaled data)."""

    step: int
    samples: int
    loss: float
    mse: float
    l0: float
    dead_fraction: float


class _Step(torch.autograd.Function):
    """Heaviside ``pre > threshold`` with the rectangle-kernel estimator for the threshold."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        window = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype) / ctx.bandwidth
        return None, (-window * grad).sum(0), None


class _JumpReLU(torch.autograd.Function):
    """``pre * (pre > threshold)``; exact gradient for ``pre``, kernel estimator for the threshold."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        window = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype) / ctx.bandwidth
        return (pre > threshold) * grad, (-threshold * window * grad).sum(0), None


def train_sae(
    source: Source,
    *,
    d_sae: int,
    architecture: Architecture | Literal["batchtopk"] = "topk",
    k: int | None = 32,
    seed: int = 0,
    hook_name: str | None = None,
    training: TrainingConfig = TrainingConfig(),
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    callback: Callable[[StepInfo], None] | None = None,
    tied_halves: int = 0,
    exclusive_halves: int = 0,
) -> SAE:
    """Train an SAE (or a transcoder) on ``source``; see the module docstring.

    Args:
        source: activations ``[N, d_in]``; a pair ``(inputs, outputs)`` for a transcoder; or
            an ``ActivationStream`` (a model's activations on a corpus; with
            ``hook_name_out`` it trains a transcoder).
        d_sae: number of latents; ``architecture``: ``topk`` (default), ``jumprelu``,
            ``relu``, ``gated`` or ``batchtopk`` (returned as ``jumprelu``); ``k``: latents per
            token (``topk``; ``batchtopk``: on average over a batch).
        hook_name: the hook a tensor source came from (streams know theirs).
        training: optimisation settings (``TrainingConfig``).
        checkpoint_dir: save checkpoints there and resume from the last one.
        callback: called with a ``StepInfo`` after every step.
        tied_halves: the first ``tied_halves`` latents write the same vector into both
            halves of the output (crosscoders' shared latents; needs an even output width).
        exclusive_halves: the next this many latents write only the output's first half,
            the ``exclusive_halves`` after them only its second half.

    Example:
        >>> sae = train_sae(torch.randn(60000, 64), d_sae=256, k=4)
    """
    batch_topk = architecture == "batchtopk"
    architecture = "topk" if batch_topk else architecture  # trained as topk with a batch-wide top-k
    k = k if architecture == "topk" else None
    batches, cfg = _prepare(source, d_sae=d_sae, architecture=architecture, k=k, hook_name=hook_name)
    if (tied_halves or exclusive_halves) and (
        cfg.width_out % 2
        or min(tied_halves, exclusive_halves) < 0
        or tied_halves + 2 * exclusive_halves > d_sae
    ):
        raise ValueError(
            f"tied_halves={tied_halves} and exclusive_halves={exclusive_halves} need an even output width "
            f"(got {cfg.width_out}) and tied_halves + 2 * exclusive_halves <= d_sae={d_sae}"
        )
    device = source.model.device if isinstance(source, ActivationStream) else _first(source).device
    sample = _sample(source, 8192, seed)
    scale = math.sqrt(cfg.d_in / sample[0].float().pow(2).sum(-1).mean().item())
    sae = SAE.create(cfg, seed=seed, device=device)
    with torch.no_grad():
        sae.b_dec.copy_((sample[1] * scale).mean(0))
        if architecture == "jumprelu":
            sae.threshold.fill_(training.initial_threshold)
    optimizer = torch.optim.Adam(sae.parameters(), lr=training.lr, betas=(0.9, 0.999))
    last_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    step = 0
    checkpoint = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if (
            state["config"] != asdict(training)
            or state["sae_config"] != asdict(cfg)
            or bool(state.get("batch_topk", False)) != batch_topk
            or (int(state.get("tied_halves", 0)), int(state.get("exclusive_halves", 0)))
            != (tied_halves, exclusive_halves)
        ):
            raise ValueError(
                f"{checkpoint} was written by a run with other settings; use another checkpoint_dir"
            )
        sae.load_state_dict(state["sae"])
        optimizer.load_state_dict(state["optimizer"])
        last_fired, step, scale = state["last_fired"], state["step"], state["scale"]
    stream = batches(training.batch_size, seed, step)
    trainer = _Trainer(sae, training, scale, batch_topk=batch_topk, halves=(tied_halves, exclusive_halves))
    if step == 0 and (tied_halves or exclusive_halves):
        trainer.after_step()  # tie (and zero halves of) the fresh decoder's rows
    if checkpoint is not None and checkpoint.is_file():
        trainer.theta = state.get("theta")
    with tqdm(
        total=training.steps,
        initial=step,
        desc=f"training {'batchtopk' if batch_topk else architecture} SAE",
        disable=not progress,
    ) as bar:
        while step < training.steps:
            x, y = (t.to(device).float() * scale for t in next(stream))
            for group in optimizer.param_groups:
                group["lr"] = _lr(training, step)
            loss, mse, acts = trainer.loss(x, y, step, last_fired)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.project_decoder_grad()
            optimizer.step()
            trainer.after_step()
            step += 1
            fired = (acts > 0).any(0)
            last_fired = torch.where(fired, step, last_fired)
            dead = ((step - last_fired) * training.batch_size >= training.dead_after).float().mean().item()
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(mse=f"{mse.item():.4f}", l0=f"{(acts > 0).sum(-1).float().mean().item():.1f}")
            if callback is not None:
                l0 = (acts > 0).sum(-1).float().mean().item()
                callback(StepInfo(step, step * training.batch_size, loss.item(), mse.item(), l0, dead))
            if checkpoint is not None and (step % training.checkpoint_every == 0 or step == training.steps):
                extra = {
                    "batch_topk": batch_topk,
                    "theta": trainer.theta,
                    "tied_halves": tied_halves,
                    "exclusive_halves": exclusive_halves,
                }
                _save_checkpoint(checkpoint, sae, optimizer, training, cfg, last_fired, step, scale, extra)
    if batch_topk:
        sae = _as_jumprelu(sae, trainer.theta)
    return _unscaled(sae, scale)


@torch.no_grad()
def _as_jumprelu(sae: SAE, theta: float | None) -> SAE:
    """A BatchTopK-trained SAE for inference: ``jumprelu`` with every threshold ``theta``."""
    cfg = replace(sae.cfg, architecture="jumprelu", k=None)
    tensors = {name: p.detach().clone() for name, p in sae.named_parameters()}
    tensors["threshold"] = torch.full_like(tensors["b_enc"], theta if theta is not None else 0.0)
    return from_tensors(cfg, tensors, source="batchtopk training")


def _first(source) -> Tensor:
    return source[0] if isinstance(source, tuple) else source


def _prepare(source: Source, *, d_sae, architecture, k, hook_name):
    """``(batches(batch_size, seed, start_step) -> iterator of (input, target), SAEConfig)``."""
    if isinstance(source, ActivationStream):
        if hook_name is not None and hook_name != source.hook_name:
            raise ValueError(f"hook_name={hook_name!r} differs from the stream's {source.hook_name!r}")
        transcoder = source.hook_name_out is not None
        cfg = SAEConfig(
            architecture=architecture,
            d_in=source.d_in,
            d_sae=d_sae,
            d_out=source.d_out if transcoder else None,
            hook_name=source.hook_name,
            hook_name_out=source.hook_name_out,
            k=k,
            apply_b_dec_to_input=not transcoder,
            model_name=source.model.architecture.model_name
            if source.model_b is None
            else f"{source.model.architecture.model_name}+{source.model_b.architecture.model_name}",
        )

        def stream_batches(batch_size: int, seed: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
            stream = ActivationStream(**{**_fields(source), "seed": seed + start})  # resumed: fresh shuffle
            for batch in stream.batches(batch_size):
                yield batch if transcoder else (batch, batch)

        return stream_batches, cfg
    inputs, outputs = source if isinstance(source, tuple) else (source, source)
    for name, t in (("source", inputs), ("transcoder outputs", outputs)):
        if not isinstance(t, Tensor) or t.ndim != 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor [N, d]; got {getattr(t, 'shape', type(t))}")
    if inputs.shape[0] != outputs.shape[0]:
        raise ValueError(f"transcoder inputs have {inputs.shape[0]} rows but outputs {outputs.shape[0]}")
    transcoder = isinstance(source, tuple)
    cfg = SAEConfig(
        architecture=architecture,
        d_in=inputs.shape[1],
        d_sae=d_sae,
        d_out=outputs.shape[1] if transcoder else None,
        hook_name=hook_name or "activations",
        k=k,
        apply_b_dec_to_input=not transcoder,
    )

    def tensor_batches(batch_size: int, seed: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        if batch_size > inputs.shape[0]:
            raise ValueError(f"batch_size {batch_size} exceeds the {inputs.shape[0]} rows of the source")
        per_epoch = inputs.shape[0] // batch_size
        epoch, index = divmod(start, per_epoch)  # resumed at step `start`: the same batches follow
        while True:
            order = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(seed + epoch))
            order = order.to(inputs.device)
            for i in range(index, per_epoch):
                rows = order[i * batch_size : (i + 1) * batch_size]
                yield inputs[rows], outputs[rows]
            epoch, index = epoch + 1, 0

    return tensor_batches, cfg


def _fields(stream: ActivationStream) -> dict:
    names = (
        "model", "texts", "hook_name", "hook_name_out", "context", "texts_per_forward", "buffer_tokens", "outlier_ratio",
        "model_b",
    )  # fmt: skip
    return {name: getattr(stream, name) for name in names}


def _sample(source: Source, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Up to ``n`` rows ``(input, target)`` to set the scale and the decoder bias."""
    if isinstance(source, ActivationStream):
        n = min(n, source.buffer_tokens // 2)
        sampler = ActivationStream(**{**_fields(source), "seed": seed, "buffer_tokens": 2 * n})
        x = next(iter(sampler.batches(n)))
        return x if isinstance(x, tuple) else (x, x)
    inputs, outputs = source if isinstance(source, tuple) else (source, source)
    rows = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(seed))[:n].to(
        inputs.device
    )
    return inputs[rows].float(), outputs[rows].float()


def _lr(cfg: TrainingConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    decay_start = cfg.steps * (1 - cfg.decay_fraction)
    decay = 1.0 if step < decay_start else max(0.0, (cfg.steps - step) / max(cfg.steps - decay_start, 1))
    return cfg.lr * warm * decay


class _Trainer:
    """Training-time forward and losses of one architecture."""

    def __init__(
        self, sae: SAE, cfg: TrainingConfig, scale: float, *, batch_topk: bool = False, halves=(0, 0)
    ):
        self.sae, self.cfg, self.scale = sae, cfg, scale
        self.tied, self.exclusive = halves
        self.aux_k = cfg.aux_k or max(1, sae.cfg.d_in // 2)
        self.batch_topk = batch_topk
        self.theta: float | None = None  # batchtopk: running mean of the smallest kept activation

    def _batch_topk(self, pre: Tensor) -> Tensor:
        """Keep the ``k * batch`` largest positive activations of the whole batch."""
        flat = pre.relu().flatten()
        values, indices = flat.topk(min(self.sae.cfg.k * pre.shape[0], flat.numel()), sorted=False)
        acts = torch.zeros_like(flat).scatter(0, indices, values).reshape(pre.shape)
        kept = values.detach()[values.detach() > 0]
        if kept.numel():
            smallest = float(kept.min())
            self.theta = smallest if self.theta is None else 0.99 * self.theta + 0.01 * smallest
        return acts

    def loss(self, x: Tensor, y: Tensor, step: int, last_fired: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sae, cfg = self.sae, self.cfg
        arch = sae.cfg.architecture
        pre = sae.hidden_pre(x)
        extra = torch.zeros((), device=x.device)
        if arch == "jumprelu":
            acts = _JumpReLU.apply(pre, sae.threshold, cfg.bandwidth)
            extra = cfg.l0_coefficient * _Step.apply(pre, sae.threshold, cfg.bandwidth).sum(-1).mean()
        elif self.batch_topk:
            acts = self._batch_topk(pre)
        else:
            acts = sae.activate(pre, x)
        recon = acts @ sae.W_dec + sae.b_dec
        mse = (recon - y).pow(2).mean()
        if arch in ("relu", "gated"):
            gate = acts if arch == "relu" else (sae._centred(x) @ sae.W_enc + sae.b_enc).relu()
            extra = cfg.l1_coefficient * gate.sum(-1).mean() / sae.cfg.width_out
            if arch == "gated":
                via_gate = gate @ sae.W_dec.detach() + sae.b_dec.detach()
                extra = extra + (via_gate - y).pow(2).mean()
        if arch == "topk":
            dead = (step - last_fired) * cfg.batch_size >= cfg.dead_after
            if dead.any():
                k_aux = min(self.aux_k, int(dead.sum()))
                masked = pre.masked_fill(~dead, float("-inf"))
                values, indices = masked.topk(k_aux, dim=-1)
                aux_acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
                residual = (y - recon).detach()
                aux = (aux_acts @ sae.W_dec - residual).pow(2).mean()
                extra = cfg.aux_coefficient * torch.nan_to_num(aux / residual.pow(2).mean().clamp_min(1e-12))
        return mse + extra, mse.detach(), acts.detach()

    def _constrain(self, w: Tensor) -> None:
        """Decoder rows (or their gradient) of tied latents: both halves their mean; of
        exclusive latents: the other half zero."""
        half, tied, exclusive = w.shape[1] // 2, self.tied, self.exclusive
        if tied:
            mean = (w[:tied, :half] + w[:tied, half:]) / 2
            w[:tied] = torch.cat([mean, mean], dim=-1)
        if exclusive:
            w[tied : tied + exclusive, half:] = 0
            w[tied + exclusive : tied + 2 * exclusive, :half] = 0

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        w, g = self.sae.W_dec, self.sae.W_dec.grad
        if g is not None:
            g -= (g * w).sum(-1, keepdim=True) * w
            self._constrain(g)

    @torch.no_grad()
    def after_step(self) -> None:
        w = self.sae.W_dec
        self._constrain(w)
        w /= w.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        if self.sae.cfg.architecture == "jumprelu":
            self.sae.threshold.clamp_(min=1e-4)


def _save_checkpoint(path: Path, sae, optimizer, training, cfg, last_fired, step, scale, extra=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "sae": sae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": asdict(training),
        "sae_config": asdict(cfg),
        "last_fired": last_fired,
        "step": step,
        "scale": scale,
        **(extra or {}),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


@torch.no_grad()
def _unscaled(sae: SAE, scale: float) -> SAE:
    """Fold the training scale ``c`` (inputs were ``c x``) into the weights.

    Latents become ``acts / c`` with the decoder unchanged: ``b_enc``, ``b_dec``, thresholds
    and ``b_mag`` divide by ``c`` (every activation function here is positively
    homogeneous once thresholds scale too), ``W_enc`` stays. A transcoder's output scale
    is the same ``c`` (targets were scaled with the input's factor).
    """
    for name in ("b_enc", "b_dec", "threshold", "b_mag"):  # gated: b_enc is the gate's bias
        if hasattr(sae, name):
            getattr(sae, name).div_(scale)
    return sae
