"""A 2-layer attention-only transformer trained to do induction: a real circuit to recover.

Induction heads (Olsson et al. 2022, "In-context Learning and Induction Heads",
https://transformer-circuits.pub/2022/in-context-learning-and-induction-heads/) complete
``... A B ... A -> B``: a *previous-token head* in layer 0 writes "the token before me was
A" into each position, and an *induction head* in layer 1 uses that as its key (K-composition)
to find the position after an earlier ``A`` and copy its token ``B`` through its OV circuit.
A 2-layer attention-only model trained on repeated random tokens forms exactly this pair.

Training data: each sequence is BOS (token 0), then random tokens in which a random block is
repeated: ``noise + block + noise + block + noise``. The block length, the gap between the
copies and where the copies sit are all drawn per sequence, so the distance from a token to
its earlier occurrence varies and "attend a fixed number of positions back" (a positional
shortcut) does not solve the task; only matching on token content does. The loss is the
next-token cross-entropy on the second copy only (from its second token on), the only tokens
that are predictable; everything else is uniform noise. Everything random comes from one
seeded ``torch.Generator``, so training is deterministic (bit-identical on one machine and
thread count).

The model is GPT-2 style (learned positions, LayerNorm) without MLPs, and has no text
tokenizer: it takes token ids only. ``load_model("toy-induction-2l")`` trains it on first use
(about 10 s on two CPU cores) and caches the weights as safetensors plus a JSON config under
``$MECHINTERP_CACHE/toy-induction-2l/<settings hash>/``.

Example:
    >>> model = mechinterp.load_model("toy-induction-2l")
    >>> tokens = torch.tensor([[0, 5, 9, 17, 33, 2, 8, 5, 9, 17]])
    >>> model(tokens)[0, -1].argmax().item()      # after "... 5 9 17 33 ... 5 9 17" comes 33
    33
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from mechinterp.models.config import ArchitectureConfig
from mechinterp.models.embedded import cache_root, cached_folder
from mechinterp.models.hooked_lm import HookedLM

INDUCTION_MODEL_NAME = "toy-induction-2l"
BOS = 0


@dataclass(frozen=True, kw_only=True)
class InductionTraining:
    """Everything that determines the trained weights (and so the cache key).

    Attributes:
        seed: seeds the initial weights and every training batch.
        steps, batch_size, lr, warmup_steps: AdamW steps, sequences per step, peak learning
            rate and the length of its linear warm-up.
        min_block, max_block: the repeated block's length range (inclusive).
        d_vocab, d_model, n_heads, d_head, n_ctx: model sizes; every training sequence is
            ``n_ctx`` tokens long.
    """

    seed: int = 0
    steps: int = 800
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    min_block: int = 4
    max_block: int = 20
    d_vocab: int = 128
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 16
    n_ctx: int = 48

    def __post_init__(self) -> None:
        if not 2 <= self.min_block <= self.max_block or 2 * self.max_block + 1 > self.n_ctx:
            raise ValueError(
                f"need 2 <= min_block <= max_block and 2 * max_block + 1 <= n_ctx "
                f"(got {self.min_block}, {self.max_block}, n_ctx={self.n_ctx})"
            )

    def architecture(self) -> ArchitectureConfig:
        return ArchitectureConfig(
            n_layers=2,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_head,
            d_mlp=0,
            d_vocab=self.d_vocab,
            n_ctx=self.n_ctx,
            act_fn="none",
            attn_only=True,
            model_name=INDUCTION_MODEL_NAME,
        )

    def key(self) -> str:
        """A short hash of the settings: the cache directory's name."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def repeated_block_batch(
    settings: InductionTraining, generator: torch.Generator
) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """One training batch: tokens ``[batch, n_ctx]`` and a mask of the positions whose next
    token is a predictable (second-copy) token.

    Per row: block length ``L``, the distance ``d >= L`` between the copies and the second
    copy's start ``s`` are drawn at random; positions ``s .. s+L-1`` copy ``s-d .. s-d+L-1``.
    """
    batch, n_pos = settings.batch_size, settings.n_ctx
    tokens = torch.randint(1, settings.d_vocab, (batch, n_pos), generator=generator)
    tokens[:, 0] = BOS
    length = torch.randint(settings.min_block, settings.max_block + 1, (batch, 1), generator=generator)
    # d in [L, n_pos - 1 - L], then s in [1 + d, n_pos - L]; uniform draws scaled per row
    distance = length + (torch.rand(batch, 1, generator=generator) * (n_pos - 2 * length)).long()
    start = 1 + distance + (torch.rand(batch, 1, generator=generator) * (n_pos - length - distance)).long()
    position = torch.arange(n_pos)
    second_copy = (position >= start) & (position < start + length)
    tokens = tokens.gather(1, torch.where(second_copy, position - distance, position))
    predictable = (position >= start) & (position < start + length - 1)  # next token is in the copy
    return tokens, predictable


def train_induction_model(settings: InductionTraining = InductionTraining(), **overrides: Any) -> HookedLM:
    """Train the induction model from scratch (deterministic; no caching, see ``load_induction_model``).

    Keyword ``overrides`` replace fields of ``settings``.

    Example:
        >>> model = train_induction_model(seed=1, steps=300)
    """
    settings = replace(settings, **overrides)
    generator = torch.Generator().manual_seed(settings.seed)
    model = HookedLM(settings.architecture())
    with torch.no_grad():
        for param in model.parameters():  # matrices ~ N(0, 0.02^2); biases 0 and norm scales 1 as built
            if param.ndim > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, settings.warmup_steps))
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these matrices are tiny: one thread is faster and fixes the reduction order
    try:
        model.train()
        for _ in range(settings.steps):
            tokens, predictable = repeated_block_batch(settings, generator)
            logits = model(tokens)
            targets = predictable[:, :-1]
            loss = F.cross_entropy(logits[:, :-1][targets], tokens[:, 1:][targets])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            warmup.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def load_induction_model(settings: InductionTraining = InductionTraining()) -> HookedLM:
    """The induction model for ``settings``, trained on first use and read from the cache after.

    The cache folder is built atomically (``cached_folder``), so an interrupted first
    training never leaves a half-written cache behind.

    Example:
        >>> model = load_induction_model()          # same as load_model("toy-induction-2l")
    """

    def train(folder: Path) -> None:
        model = train_induction_model(settings)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
        config = {"architecture": asdict(model.architecture), "training": asdict(settings)}
        (folder / "config.json").write_text(json.dumps(config, indent=2))

    target = cached_folder(cache_root() / INDUCTION_MODEL_NAME / settings.key(), train)
    config = json.loads((target / "config.json").read_text())
    model = HookedLM(ArchitectureConfig(**config["architecture"]))
    model.load_state_dict(_renamed_grouped_weights(load_file(target / "model.safetensors")))
    return model.eval()


_GROUPED = ("W_K", "W_V", "b_K", "b_V")


def _renamed_grouped_weights(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Caches written before the grouped key/value weights were renamed store
    ``attn.W_K`` etc.; today these are ``attn.W_K_grouped`` (same tensors)."""
    renamed = {}
    for name, tensor in state.items():
        prefix, _, last = name.rpartition(".")
        renamed[f"{name}_grouped" if prefix.endswith("attn") and last in _GROUPED else name] = tensor
    return renamed


TOY_MODELS = {INDUCTION_MODEL_NAME: load_induction_model}
"""Models trained here on first use, by the name ``load_model`` takes."""
