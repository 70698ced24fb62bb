"""Transcoders that stand in for a model's MLPs: per-layer (PLT) and cross-layer (CLT).

A transcoder (Dunefsky et al. 2024) reads what an MLP reads and predicts what it writes, through
a sparse layer of features. A **cross-layer transcoder** (Ameisen et al. 2025, "Circuit
Tracing") has one encoder per layer and, for the features of layer ``l``, one decoder per later
MLP: they write into the MLP outputs of layers ``l..L-1``. A per-layer transcoder is the special
case with a single decoder (into its own layer). ``Transcoder`` holds either kind:

    pre_l   = x_l @ W_enc[l].T + b_enc[l]                       # [pos, d_tc]
    a_l     = f(pre_l)                                          # relu / jumprelu / topk
    mlp_out_l' ≈ sum_{l <= l'} a_l @ W_dec[l][:, l' - l] + b_dec[l']

in circuit-tracer's layout: ``W_enc[l]`` ``[d_tc, d_in]``, ``W_dec[l]`` ``[d_tc, n_out, d_model]``
(``n_out = L - l`` for a CLT, 1 for a PLT), ``b_dec[l]`` the bias of *output* layer ``l``.

Where the encoder reads (``input_site``):

- ``"mlp_in"``: ``blocks.{l}.hook_mlp_in``, the residual stream the MLP block reads, before its
  norm: ``hook_resid_mid`` in a sequential block (circuit-tracer's CLTs read that hook),
  ``hook_resid_pre`` in a parallel one (GPT-NeoX, GPT-J);
- ``"mlp_normalized"``: what the MLP itself reads, ``ln2(hook_mlp_in)`` (Gemma Scope
  transcoders; circuit-tracer's per-layer transcoders on ``mlp.hook_in``). In the frozen
  replacement ``ln2``'s scale is frozen, so the map stays linear.

Every decoder writes ``blocks.{l}.hook_mlp_out`` (after any post-MLP norm).

Example:
    >>> tc = random_transcoders(model, 64, kind="clt")
    >>> acts = tc.encode(0, x)                 # x: [pos, d_model], what layer 0's encoder reads
    >>> tc.W_dec[0].shape                       # [64, n_layers, d_model]
    >>> tc = load_transcoders("clt-folder")     # circuit-tracer's W_enc_{l} / W_dec_{l} files
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float, Shaped
from safetensors.torch import load_file
from torch import Tensor, nn

InputSite = Literal["mlp_in", "mlp_normalized"]
Activation = Literal["relu", "jumprelu", "topk"]
Kind = Literal["plt", "clt"]


def _frozen(tensors: Sequence[Tensor]) -> nn.ParameterList:
    return nn.ParameterList(nn.Parameter(t.detach().clone(), requires_grad=False) for t in tensors)


class Transcoder(nn.Module):
    """Per-layer or cross-layer transcoders for every MLP of a model (see the module docstring).

    Build one with ``load_transcoders``, ``Transcoder.from_saes`` or ``random_transcoders``, or
    from tensors: ``Transcoder(W_enc, b_enc, W_dec, b_dec, activation=..., threshold=...)``, each
    a list with one entry per layer. Layers may differ in width (``widths``).
    """

    def __init__(
        self,
        W_enc: Sequence[Float[Tensor, "_d_sae d_in"]],
        b_enc: Sequence[Float[Tensor, " _d_sae"]],
        W_dec: Sequence[Float[Tensor, "_d_sae *_ d_out"]],
        b_dec: Sequence[Float[Tensor, " d_out"]],
        *,
        activation: Activation = "jumprelu",
        threshold: Sequence[Float[Tensor, " _d_sae"]] | None = None,
        k: int | None = None,
        input_site: InputSite = "mlp_in",
    ):
        super().__init__()
        n = len(W_enc)
        if not n or not len(b_enc) == len(W_dec) == len(b_dec) == n:
            raise ValueError(
                f"one W_enc, b_enc, W_dec and b_dec per layer: got {n}, {len(b_enc)}, {len(W_dec)}, {len(b_dec)}"
            )
        if activation not in get_args(Activation):
            raise ValueError(f"activation must be one of {get_args(Activation)}, got {activation!r}")
        if input_site not in get_args(InputSite):
            raise ValueError(f"input_site must be one of {get_args(InputSite)}, got {input_site!r}")
        if (activation == "jumprelu") != (threshold is not None):
            raise ValueError("threshold is required for activation='jumprelu' and only allowed there")
        if (activation == "topk") != (k is not None):
            raise ValueError("k is required for activation='topk' and only allowed there")
        n_out = [w.shape[1] if w.ndim == 3 else -1 for w in W_dec]
        if n_out == [1] * n:
            self.kind: Kind = "plt"
        elif n_out == [n - layer for layer in range(n)]:
            self.kind = "clt"
        else:
            raise ValueError(
                f"W_dec[l] must be [d_tc, n_out, d_model] with n_out = 1 (per-layer) or n_layers - l "
                f"(cross-layer); got shapes {[tuple(w.shape) for w in W_dec]}"
            )
        d_model = W_dec[0].shape[-1]
        for layer in range(n):
            width = W_dec[layer].shape[0]
            expected = {
                "W_enc": (width, W_enc[0].shape[1]),
                "b_enc": (width,),
                "b_dec": (d_model,),
                **({"threshold": (width,)} if threshold is not None else {}),
            }
            given = {"W_enc": W_enc[layer], "b_enc": b_enc[layer], "b_dec": b_dec[layer]}
            if threshold is not None:
                given["threshold"] = threshold[layer]
            for name, shape in expected.items():
                if tuple(given[name].shape) != shape:
                    raise ValueError(
                        f"layer {layer}: {name} has shape {tuple(given[name].shape)}, expected {shape} "
                        f"(W_dec[{layer}] is {tuple(W_dec[layer].shape)})"
                    )
        self.activation: Activation = activation
        self.k = k
        self.input_site: InputSite = input_site
        self.W_enc, self.b_enc = _frozen(W_enc), _frozen(b_enc)
        self.W_dec, self.b_dec = _frozen(W_dec), _frozen(b_dec)
        self.threshold = _frozen(threshold) if threshold is not None else None

    # ------------------------------------------------------------------ sizes
    @property
    def n_layers(self) -> int:
        return len(self.W_enc)

    @property
    def d_model(self) -> int:
        return self.W_dec[0].shape[-1]

    @property
    def widths(self) -> tuple[int, ...]:
        """Features per layer (``d_tc``)."""
        return tuple(w.shape[0] for w in self.W_enc)

    @property
    def device(self) -> torch.device:
        return self.W_enc[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc[0].dtype

    def output_layers(self, layer: int) -> range:
        """The MLP outputs that the features of ``layer`` write into."""
        return range(layer, layer + self.W_dec[layer].shape[1])

    def __repr__(self) -> str:
        width = self.widths[0] if len(set(self.widths)) == 1 else self.widths
        extra = f", k={self.k}" if self.k is not None else ""
        return (
            f"Transcoder({self.kind}, {self.n_layers} layers x {width} features, {self.activation}{extra}, "
            f"reads {self.input_site}, {self.dtype})"
        )

    # ------------------------------------------------------------------ the maths
    def pre_activations(self, layer: int, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """``x @ W_enc[layer].T + b_enc[layer]``."""
        return x.to(self.dtype) @ self.W_enc[layer].T + self.b_enc[layer]

    def activate(self, layer: int, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        """The feature activations from pre-activations (JumpReLU: ``pre * (pre > threshold)``)."""
        if self.activation == "relu":
            return pre.relu()
        if self.activation == "jumprelu":
            return pre * (pre > self.threshold[layer])
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def encode(self, layer: int, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Feature activations of ``layer`` for encoder inputs ``x``."""
        return self.activate(layer, self.pre_activations(layer, x))

    def decode(
        self, layer: int, acts: Sequence[Float[Tensor, "*batch _d_sae"]]
    ) -> Float[Tensor, "*batch d_model"]:
        """The reconstruction of MLP output ``layer`` from the activations of every layer
        (``acts[l]``: ``[..., d_tc_l]``; only layers whose decoders reach ``layer`` are read)."""
        out = self.b_dec[layer]
        for source in range(layer + 1):
            if layer in self.output_layers(source):
                out = out + acts[source].to(self.dtype) @ self.W_dec[source][:, layer - source]
        return out

    def transcoder_input(
        self, model: Any, layer: int, mlp_in: Float[Tensor, "*batch d_in"]
    ) -> Float[Tensor, "*batch d_in"]:
        """What the encoder of ``layer`` reads, from ``blocks.{layer}.hook_mlp_in``'s value: itself,
        or (``input_site="mlp_normalized"``) the block's own ``ln2`` of it (fires ``ln2.hook_scale``,
        so a frozen scale applies)."""
        norm = getattr(model.blocks[layer], "ln2", None)
        return norm(mlp_in) if self.input_site == "mlp_normalized" and norm is not None else mlp_in

    def check_model(self, model: Any) -> None:
        """Raise ``ValueError`` unless these transcoders fit ``model`` (layers, widths, MLPs)."""
        arch = model.architecture
        if arch.attn_only:
            raise ValueError(
                f"{arch.model_name} is attention-only: it has no MLPs for transcoders to replace"
            )
        if (
            self.n_layers != arch.n_layers
            or self.d_model != arch.d_model
            or self.W_enc[0].shape[1] != arch.d_model
        ):
            raise ValueError(
                f"transcoders for {self.n_layers} layers, d_in={self.W_enc[0].shape[1]}, d_model={self.d_model} "
                f"do not fit {arch.model_name} ({arch.n_layers} layers, d_model={arch.d_model})"
            )

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_saes(cls, saes: Sequence[Any], *, input_site: InputSite | None = None) -> Transcoder:
        """Per-layer transcoders from ``mechinterp.sae.SAE`` transcoders, one per layer, each
        reading ``blocks.{l}.hook_mlp_in`` (or ``hook_resid_mid``) and writing ``hook_mlp_out``
        (``hook_name_out``). SAELens' ``apply_b_dec_to_input`` is folded into ``b_enc``.
        ``input_site`` overrides what the hook names say (``"mlp_normalized"`` for transcoders
        trained on the MLP's normalised input, which our hooks do not name).

        Example:
            >>> tc = Transcoder.from_saes([load_sae(f"tc/layer_{l}") for l in range(n_layers)])
        """
        by_layer: dict[int, Any] = {}
        for sae in saes:
            cfg = sae.cfg
            if not cfg.is_transcoder:
                raise ValueError(f"{sae!r} is not a transcoder (its config has no hook_name_out)")
            out = re.fullmatch(r"blocks\.(\d+)\.hook_mlp_out", cfg.hook_name_out)
            inp = re.fullmatch(
                r"blocks\.(\d+)\.(hook_mlp_in|hook_resid_mid|ln2\.hook_normalized)", cfg.hook_name
            )
            if out is None or inp is None or inp.group(1) != out.group(1):
                raise ValueError(
                    f"{sae!r}: a transcoder for attribution graphs reads blocks.{{l}}.hook_mlp_in (or "
                    f"hook_resid_mid) and writes blocks.{{l}}.hook_mlp_out of the same layer"
                )
            if cfg.architecture not in get_args(Activation) or cfg.normalize_activations != "none":
                raise ValueError(
                    f"{sae!r}: only relu / jumprelu / topk transcoders without input normalisation keep the "
                    f"replacement linear (got architecture={cfg.architecture!r}, "
                    f"normalize_activations={cfg.normalize_activations!r})"
                )
            layer = int(out.group(1))
            if layer in by_layer:
                raise ValueError(f"two transcoders for layer {layer}")
            by_layer[layer] = sae
        if sorted(by_layer) != list(range(len(by_layer))):
            raise ValueError(f"need one transcoder for every layer 0..L-1; got layers {sorted(by_layer)}")
        ordered = [by_layer[layer] for layer in range(len(by_layer))]
        first = ordered[0].cfg
        if any(s.cfg.architecture != first.architecture or s.cfg.k != first.k for s in ordered):
            raise ValueError("all layers' transcoders must share one architecture (and k)")
        site = input_site or (
            "mlp_normalized" if first.hook_name.endswith("ln2.hook_normalized") else "mlp_in"
        )
        b_enc = [s.b_enc - s.b_dec @ s.W_enc if s.cfg.apply_b_dec_to_input else s.b_enc for s in ordered]
        return cls(
            [s.W_enc.T for s in ordered],
            b_enc,
            [s.W_dec[:, None] for s in ordered],
            [s.b_dec for s in ordered],
            activation=first.architecture,
            threshold=[s.threshold for s in ordered] if first.architecture == "jumprelu" else None,
            k=first.k,
            input_site=site,
        )

    @classmethod
    def from_circuit_tracer(
        cls, tensors: dict[str, Shaped[Tensor, "..."]], *, input_site: InputSite = "mlp_in"
    ) -> Transcoder:
        """A CLT (or PLT) from circuit-tracer's tensors: per layer ``W_enc_{l}`` ``[d_tc, d_model]``,
        ``b_enc_{l}``, ``b_dec_{l}``, ``W_dec_{l}`` ``[d_tc, L - l, d_model]`` (or ``[d_tc, d_model]``
        for a PLT), and JumpReLU ``threshold_{l}`` (any shape holding ``d_tc`` values).
        Without thresholds the activation is ReLU."""
        layers = sorted(int(m.group(1)) for name in tensors if (m := re.fullmatch(r"W_enc_(\d+)", name)))
        if not layers or layers != list(range(len(layers))):
            raise KeyError(
                f"expected W_enc_0 .. W_enc_<L-1>; found {', '.join(sorted(tensors)) or 'nothing'}"
            )

        def get(name: str) -> Tensor:
            if name not in tensors:
                raise KeyError(f"missing {name} (found: {', '.join(sorted(tensors))})")
            return tensors[name]

        jump = f"threshold_{layers[0]}" in tensors
        W_dec = [get(f"W_dec_{i}") for i in layers]
        return cls(
            [get(f"W_enc_{i}") for i in layers],
            [get(f"b_enc_{i}") for i in layers],
            [w[:, None] if w.ndim == 2 else w for w in W_dec],
            [get(f"b_dec_{i}") for i in layers],
            activation="jumprelu" if jump else "relu",
            threshold=[get(f"threshold_{i}").reshape(-1) for i in layers] if jump else None,
            input_site=input_site,
        )


def load_transcoders(
    source: Any,
    *,
    input_site: InputSite | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Transcoder:
    """Transcoders for every layer, from:

    - a ``Transcoder`` (returned, moved to ``device`` / ``dtype``);
    - a list of ``mechinterp.sae.SAE`` transcoders, one per layer (``Transcoder.from_saes``);
      SAELens transcoder folders load into such objects with ``mechinterp.sae.load_sae``;
    - circuit-tracer's CLT layout: a ``.safetensors`` file, or a folder of them
      (``W_enc_{l}.safetensors`` with ``W_enc_{l}``, ``b_enc_{l}``, ``b_dec_{l}``,
      ``threshold_{l}``; ``W_dec_{l}.safetensors`` with ``W_dec_{l}``); tensors are merged over
      the files. circuit-tracer's CLTs read ``hook_resid_mid``: ``input_site="mlp_in"``;
    - a folder of SAE folders (``load_sae`` each), one transcoder per layer;
    - Gemma Scope transcoders (Lieberum et al. 2024): a folder holding one ``params.npz`` per
      layer below a ``layer_{l}`` folder (their release's layout, e.g.
      ``layer_3/width_16k/average_l0_54/params.npz``; keep one L0 per layer). They are JumpReLU
      transcoders that read the MLP's normalised input (``input_site="mlp_normalized"``).

    Example:
        >>> tc = load_transcoders("downloads/clt-llama-3.2-1b")         # circuit-tracer layout
        >>> tc = load_transcoders([load_sae(p) for p in folders])       # our / SAELens transcoders
    """
    if isinstance(source, Transcoder):
        transcoder = source
    elif isinstance(source, (list, tuple)):
        transcoder = Transcoder.from_saes(source, input_site=input_site)
    else:
        path = Path(source)
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) if path.is_dir() else []
        if files:
            tensors: dict[str, Tensor] = {}
            for file in files:
                tensors |= load_file(str(file))
            transcoder = Transcoder.from_circuit_tracer(tensors, input_site=input_site or "mlp_in")
        elif path.is_dir() and any(path.rglob(GEMMA_SCOPE_FILE)):
            transcoder = _gemma_scope_transcoders(path, input_site or "mlp_normalized")
        elif path.is_dir():
            from mechinterp.sae import load_sae

            folders = sorted(p for p in path.iterdir() if p.is_dir())
            if not folders:
                raise ValueError(f"{path} holds neither .safetensors files nor SAE folders")
            transcoder = Transcoder.from_saes([load_sae(p) for p in folders], input_site=input_site)
        else:
            raise FileNotFoundError(f"no transcoders at {path}")
    return transcoder.to(device=device, dtype=dtype)


GEMMA_SCOPE_FILE = "params.npz"


def _gemma_scope_transcoders(folder: Path, input_site: InputSite) -> Transcoder:
    """Per-layer JumpReLU transcoders from Gemma Scope's ``layer_{l}/.../params.npz`` files."""
    from mechinterp.sae.files import read_npz

    by_layer: dict[int, list[Path]] = {}
    for file in sorted(folder.rglob(GEMMA_SCOPE_FILE)):
        match = re.search(r"(?:^|/)layer_(\d+)(?:/|$)", file.relative_to(folder).as_posix())
        if match is None:
            raise ValueError(
                f"{file}: Gemma Scope files sit below a layer_<l> folder; found none in its path"
            )
        by_layer.setdefault(int(match.group(1)), []).append(file)
    several = {layer: files for layer, files in by_layer.items() if len(files) > 1}
    if several:
        layer, files = min(several.items())
        raise ValueError(
            f"{folder}: layer {layer} has {len(files)} transcoders ({', '.join(str(f.parent) for f in files)}); "
            "keep one per layer (one width and average L0) in the folder you load"
        )
    if sorted(by_layer) != list(range(len(by_layer))):
        raise ValueError(
            f"{folder}: need a transcoder for every layer 0..L-1; found layers {sorted(by_layer)}"
        )
    arrays = [read_npz(by_layer[layer][0]) for layer in range(len(by_layer))]
    for layer, tensors in enumerate(arrays):
        missing = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"} - set(tensors)
        if missing:
            raise KeyError(f"{by_layer[layer][0]}: missing {', '.join(sorted(missing))}")
    return Transcoder(
        [t["W_enc"].T for t in arrays],
        [t["b_enc"] for t in arrays],
        [t["W_dec"][:, None] for t in arrays],
        [t["b_dec"] for t in arrays],
        activation="jumprelu",
        threshold=[t["threshold"] for t in arrays],
        input_site=input_site,
    )


def random_transcoders(
    model: Any,
    d_tc: int,
    *,
    kind: Kind = "plt",
    activation: Activation = "jumprelu",
    k: int | None = None,
    input_site: InputSite = "mlp_in",
    seed: int = 0,
) -> Transcoder:
    """Random transcoders shaped for ``model`` (tests and benchmarks): unit-norm encoder rows,
    decoders of norm ``1/sqrt(d_tc)`` per feature and output layer, small random biases, zero
    JumpReLU thresholds (about half the features fire), on the model's device and dtype.

    Example:
        >>> tc = random_transcoders(model, 128, kind="clt", activation="topk", k=8)
    """
    arch = model.architecture
    n, d = arch.n_layers, arch.d_model
    g = torch.Generator().manual_seed(seed)

    def unit(*shape: int) -> Tensor:
        w = torch.randn(*shape, generator=g)
        return w / w.norm(dim=-1, keepdim=True)

    W_enc = [unit(d_tc, d) for _ in range(n)]
    n_out = [n - layer if kind == "clt" else 1 for layer in range(n)]
    W_dec = [unit(d_tc, m, d) / math.sqrt(d_tc) for m in n_out]
    b_enc = [0.1 * torch.randn(d_tc, generator=g) for _ in range(n)]
    b_dec = [0.1 * torch.randn(d, generator=g) for _ in range(n)]
    threshold = [torch.zeros(d_tc) for _ in range(n)] if activation == "jumprelu" else None
    transcoder = Transcoder(
        W_enc, b_enc, W_dec, b_dec, activation=activation, threshold=threshold, k=k, input_site=input_site
    )
    return transcoder.to(device=model.device, dtype=model.dtype)
