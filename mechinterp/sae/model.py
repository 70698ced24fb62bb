"""``SAE``: a sparse autoencoder (or transcoder) over one hook's activations.

A sparse autoencoder (Bricken et al. 2023, "Towards Monosemanticity"; Cunningham et al. 2023)
writes an activation ``x`` as a sparse non-negative combination of learned directions:

    pre  = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc      # [..., d_sae]
    acts = f(pre)                                                          # sparse
    x̂    = acts @ W_dec + b_dec                                            # [..., d_in]

with ``f`` one of

- ``relu`` (SAELens ``standard``): ``relu(pre)``, trained with an L1 penalty;
- ``jumprelu`` (Rajamanoharan et al. 2024): ``pre * (pre > threshold)``, per-latent thresholds
  (with ``threshold_relu``, SAELens' form ``relu(pre) * (pre > threshold)``; the two differ
  only where a threshold is negative);
- ``topk`` (Gao et al. 2024): the ``k`` largest entries of ``relu(pre)``, the rest zero;
- ``gated`` (Rajamanoharan et al. 2024): a gate ``x @ W_enc + b_enc > 0`` decides which
  latents fire, a magnitude path ``relu(x @ (W_enc * exp(r_mag)) + b_mag)`` says how much.

A **transcoder** (Dunefsky et al. 2024) has the same parts but reads one hook (the MLP's
input) and writes another (its output): ``hook_name_out`` is set and ``d_out`` may differ.
A **skip transcoder** (``skip=True``, SAELens' ``skip_transcoder``) adds a linear path from
the raw input: ``x̂ = acts @ W_dec + b_dec + x @ W_skip.T`` with ``W_skip [d_out, d_in]``.

``normalize_activations`` follows SAELens: ``constant_norm_rescale`` scales each input to
norm ``sqrt(d_in)`` and ``layer_norm`` standardises it; ``forward`` undoes either on the
output. ``encode`` and ``decode`` work in the normalised space.

Example:
    >>> sae = SAE.create(SAEConfig(architecture="topk", k=32, d_in=576, d_sae=4608,
    ...                            hook_name="blocks.15.hook_resid_post"))
    >>> acts = sae.encode(resid)            # [batch, pos, 4608], at most 32 non-zero per token
    >>> recon = sae.decode(acts)            # [batch, pos, 576]
    >>> sae.save("runs/sae"); SAE.load("runs/sae")
    >>> sae.save("runs/sae-saelens", format="saelens")    # cfg.json + sae_weights.safetensors
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal, get_args

import torch
from jaxtyping import Float
from safetensors.torch import save_file
from torch import Tensor, nn

from mechinterp.sae.files import check_finite, read_json, read_safetensors
from mechinterp.sae.saelens_format import write_saelens
from mechinterp.sae.splice import SAESplice

Architecture = Literal["relu", "jumprelu", "topk", "gated"]
Normalization = Literal["none", "constant_norm_rescale", "layer_norm"]
FORMAT_VERSION = 1
CONFIG_FILE = "sae.json"
WEIGHTS_FILE = "sae.safetensors"


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """What an SAE is: its activation function, sizes and the hook(s) it reads and writes.

    Attributes:
        architecture: ``relu``, ``jumprelu``, ``topk`` or ``gated``.
        d_in: width of the activation read; ``d_out``: width written (transcoders; default ``d_in``).
        d_sae: number of latents.
        hook_name: the hook whose activation is encoded.
        hook_name_out: transcoders only: the hook whose activation the decoder replaces.
        k: latents kept per token (``topk`` only).
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding.
        normalize_activations: input normalisation, undone on the output (see module docs).
        model_name: the model it was trained on (informational).
        threshold_relu: ``jumprelu`` only: ``relu(pre) * (pre > threshold)`` (SAELens) instead
            of the paper's ``pre * (pre > threshold)`` (Gemma Scope, our training).
        skip: a skip connection ``x @ W_skip.T`` from the raw input to the output.
    """

    architecture: Architecture
    d_in: int
    d_sae: int
    hook_name: str
    hook_name_out: str | None = None
    d_out: int | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = False
    normalize_activations: Normalization = "none"
    model_name: str | None = None
    threshold_relu: bool = False
    skip: bool = False

    def __post_init__(self) -> None:
        if self.architecture not in get_args(Architecture):
            raise ValueError(
                f"architecture must be one of {', '.join(get_args(Architecture))}, got {self.architecture!r}"
            )
        if self.normalize_activations not in get_args(Normalization):
            raise ValueError(
                f"normalize_activations must be one of {', '.join(get_args(Normalization))}, "
                f"got {self.normalize_activations!r}"
            )
        if (self.architecture == "topk") != (self.k is not None):
            raise ValueError("k is required for architecture='topk' and only allowed there")
        if self.threshold_relu and self.architecture != "jumprelu":
            raise ValueError(f"threshold_relu applies to jumprelu SAEs only, not {self.architecture}")
        if self.k is not None and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must lie in [1, d_sae={self.d_sae}], got {self.k}")
        if min(self.d_in, self.d_sae, self.width_out) <= 0:
            raise ValueError(
                f"sizes must be positive: d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out}"
            )

    @property
    def width_out(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def is_transcoder(self) -> bool:
        return self.hook_name_out is not None

    @property
    def splice_hook(self) -> str:
        """The hook whose activation is replaced when spliced (and whose name prefixes the
        ``hook_sae_*`` points)."""
        return self.hook_name_out if self.hook_name_out is not None else self.hook_name


class SAE(nn.Module):
    """A sparse autoencoder or transcoder; see the module docstring for the maths.

    Parameters (TransformerLens / SAELens layout): ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
    ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``; ``threshold [d_sae]`` (jumprelu);
    ``b_mag``, ``r_mag [d_sae]`` (gated; ``b_enc`` is the gate's bias); ``W_skip [d_out, d_in]``
    (skip connection).
    Build one with ``SAE.create`` (random init), ``SAE.load`` (our format) or ``load_sae``.
    """

    def __init__(self, cfg: SAEConfig, *, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.cfg = cfg
        kw = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.width_out, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.width_out, **kw))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        if cfg.architecture == "gated":
            self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
            self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.width_out, cfg.d_in, **kw))
        if cfg.apply_b_dec_to_input and cfg.width_out != cfg.d_in:
            raise ValueError(
                f"apply_b_dec_to_input needs d_out == d_in (b_dec is subtracted from the input); "
                f"got d_in={cfg.d_in}, d_out={cfg.width_out}"
            )

    @classmethod
    def create(cls, cfg: SAEConfig, *, seed: int = 0, dtype=torch.float32, device=None) -> SAE:
        """A freshly initialised SAE: unit-norm random decoder rows, ``W_enc = W_dec.T``
        (the tied initialisation of Gao et al. 2024), zero biases."""
        sae = cls(cfg, dtype=dtype, device=device)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = torch.randn(cfg.d_sae, cfg.width_out, generator=generator)
            w = w / w.norm(dim=-1, keepdim=True)
            sae.W_dec.copy_(w)
            if cfg.width_out == cfg.d_in:
                sae.W_enc.copy_(w.T)
            else:
                sae.W_enc.copy_(torch.randn(cfg.d_in, cfg.d_sae, generator=generator) / math.sqrt(cfg.d_in))
        return sae

    # ------------------------------------------------------------------ properties
    @property
    def hook_name(self) -> str:
        return self.cfg.hook_name

    @property
    def splice_hook(self) -> str:
        """The hook whose activation is replaced when spliced (``cfg.splice_hook``)."""
        return self.cfg.splice_hook

    def spliced(self, model, *, use_error_term: bool = False) -> SAESplice:
        """This SAE spliced into ``model``, as a context manager (``model.saes`` enters it;
        see ``mechinterp.sae.splice``). Makes an SAE a ``mechinterp.models.splicing.Splice``."""
        return SAESplice(model, self, use_error_term)

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def __repr__(self) -> str:
        c = self.cfg
        extra = f", k={c.k}" if c.k is not None else ""
        out = f" -> {c.hook_name_out}" if c.is_transcoder else ""
        return (
            f"SAE({c.architecture}{extra}, {c.d_in} -> {c.d_sae} latents, {c.hook_name}{out}, {self.dtype})"
        )

    # ------------------------------------------------------------------ the maths, in stages
    def normalizer(
        self, x: Float[Tensor, "*batch d_in"]
    ) -> tuple[
        Float[Tensor, "*batch d_in"], Callable[[Float[Tensor, "*batch d_out"]], Float[Tensor, "*batch d_out"]]
    ]:
        """``(normalised x, undo)``: ``undo`` maps a reconstruction back to ``x``'s scale."""
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = math.sqrt(self.cfg.d_in) / x.norm(dim=-1, keepdim=True)
            return x * coeff, lambda y: y / coeff
        if mode == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            std = (x - mu).std(-1, keepdim=True)
            return (x - mu) / (std + 1e-5), lambda y: y * std + mu
        return x, lambda y: y

    def hidden_pre(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Pre-activations of already normalised inputs (gated: the magnitude path)."""
        x = self._centred(x)
        if self.cfg.architecture == "gated":
            return x @ (self.W_enc * self.r_mag.exp()) + self.b_mag
        return x @ self.W_enc + self.b_enc

    def activate(
        self, pre: Float[Tensor, "*batch d_sae"], x: Float[Tensor, "*batch d_in"]
    ) -> Float[Tensor, "*batch d_sae"]:
        """The sparse activations from pre-activations ``pre`` (``x``, the normalised input,
        is read by the gated architecture's gate only)."""
        arch = self.cfg.architecture
        if arch == "relu":
            return pre.relu()
        if arch == "jumprelu":
            return (pre.relu() if self.cfg.threshold_relu else pre) * (pre > self.threshold)
        if arch == "topk":
            values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu())
        gate = self._centred(x) @ self.W_enc + self.b_enc
        return (gate > 0).to(pre.dtype) * pre.relu()

    def skip_term(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"] | float:
        """The skip connection's contribution ``x @ W_skip.T`` from the raw input (0 without one)."""
        return x @ self.W_skip.T if self.cfg.skip else 0.0

    def _centred(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def _check_input(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"SAE for {self.cfg.hook_name} expects inputs [..., {self.cfg.d_in}], got {tuple(x.shape)}"
            )
        return x.to(self.dtype)

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Latent activations of ``x`` (normalised first if the SAE normalises)."""
        x, _ = self.normalizer(self._check_input(x))
        return self.activate(self.hidden_pre(x), x)

    def decode(self, acts: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_out"]:
        """``acts @ W_dec + b_dec`` (in the normalised space when the SAE normalises)."""
        if acts.shape[-1] != self.cfg.d_sae:
            raise ValueError(f"expected latent activations [..., {self.cfg.d_sae}], got {tuple(acts.shape)}")
        return acts.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        """The reconstruction of ``x`` (a transcoder: its prediction of the output hook)."""
        raw = self._check_input(x)
        x, undo = self.normalizer(raw)
        return undo(self.decode(self.activate(self.hidden_pre(x), x))) + self.skip_term(raw)

    # ------------------------------------------------------------------ our file format
    def save(self, path: str | Path, *, format: Literal["mechinterp", "saelens"] = "mechinterp") -> Path:
        """Write ``sae.json`` (config, format version) and ``sae.safetensors`` into folder ``path``;
        with ``format="saelens"``, SAELens 6's ``cfg.json`` and ``sae_weights.safetensors``
        (read by ``sae_lens.SAE.load_from_disk``; see ``mechinterp.sae.saelens_format``)."""
        folder = Path(path)
        tensors = {name: p.detach().contiguous().cpu() for name, p in self.named_parameters()}
        if format == "saelens":
            return write_saelens(folder, self.cfg, tensors)
        if format != "mechinterp":
            raise ValueError(f"format must be 'mechinterp' or 'saelens', got {format!r}")
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / WEIGHTS_FILE))
        meta = {"format": "mechinterp-sae", "version": FORMAT_VERSION, "config": asdict(self.cfg)}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, path: str | Path, *, device=None, dtype: torch.dtype | None = None) -> SAE:
        """Read a folder written by ``save``."""
        folder = Path(path)
        meta_file = folder / CONFIG_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}; is it an SAE saved by SAE.save?")
        meta = read_json(meta_file)
        if meta.get("format") != "mechinterp-sae" or meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_file} is not a version-{FORMAT_VERSION} mechinterp SAE "
                f"(format={meta.get('format')!r}, version={meta.get('version')!r})"
            )
        known = {f.name for f in fields(SAEConfig)}
        cfg = SAEConfig(**{k: v for k, v in meta["config"].items() if k in known})
        weights = folder / WEIGHTS_FILE
        return from_tensors(cfg, read_safetensors(weights), source=str(weights), device=device, dtype=dtype)

    def with_config(self, **changes) -> SAE:
        """A copy with config fields changed (e.g. ``hook_name``), sharing no tensors."""
        cfg = replace(self.cfg, **changes)
        state = {name: p.detach().clone() for name, p in self.named_parameters()}
        return from_tensors(cfg, state, source="with_config")


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape for an SAE of config ``cfg``."""
    shapes = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.width_out),
        "b_dec": (cfg.width_out,),
    }
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    if cfg.architecture == "gated":
        shapes |= {"b_mag": (cfg.d_sae,), "r_mag": (cfg.d_sae,)}
    if cfg.skip:
        shapes["W_skip"] = (cfg.width_out, cfg.d_in)
    return shapes


def from_tensors(
    cfg: SAEConfig, tensors: dict[str, Tensor], *, source: str, device=None, dtype: torch.dtype | None = None
) -> SAE:
    """An SAE with ``tensors`` as parameters, after checking every name and shape.

    Raises ``KeyError`` naming missing parameters, ``ValueError`` for parameters it would
    have to ignore, for shape mismatches (naming both shapes) and for NaN or infinite
    values (naming the tensor), each mentioning ``source``.
    """
    shapes = expected_shapes(cfg)
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise KeyError(
            f"{source}: missing {', '.join(missing)} for a {cfg.architecture} SAE "
            f"(found: {', '.join(sorted(tensors)) or 'nothing'})"
        )
    unexpected = sorted(set(tensors) - set(shapes))
    if unexpected:  # e.g. a skip transcoder's W_skip: ignoring it would change the maths
        raise ValueError(
            f"{source}: unsupported parameters {', '.join(unexpected)} for a {cfg.architecture} SAE "
            f"(supported: {', '.join(shapes)})"
        )
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{source}: {name} has shape {tuple(tensors[name].shape)}, expected {shape} "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.width_out})"
            )
    check_finite({name: tensors[name] for name in shapes}, source)
    first = tensors["W_enc"]
    dtype = dtype or (first.dtype if first.is_floating_point() else torch.float32)
    sae = SAE(cfg, dtype=dtype, device="meta")
    sae.load_state_dict({n: tensors[n].to(dtype) for n in shapes}, assign=True)
    return sae.to(device) if device is not None else sae
