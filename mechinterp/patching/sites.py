"""What gets patched: sites (one patch cell) and sweep specs (a grid of cells).

A ``PatchSite`` names one activation slice: a hook kind, a layer, optionally a position,
a head and (attention patterns) a source position. ``SweepSpec`` enumerates the sites of
a sweep and the axes its results are laid out on (the same axes as TransformerLens'
``get_act_patch_*`` functions).

Example:
    >>> spec = SweepSpec(kind="z", per_position=False)       # every head, all positions
    >>> grid = spec.enumerate(model, n_pos=15)
    >>> grid.axes, grid.shape
    (('layer', 'head'), (30, 9))
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass
from typing import Literal

SiteKind = Literal[
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post", "z", "q", "k", "v", "pattern",
    "sae_resid_pre", "sae_resid_mid", "sae_resid_post", "sae_attn_out", "sae_mlp_out",
]  # fmt: skip

# hook path inside block {layer}, and the axis layout of the activation after batch
HOOKS: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_post": "mlp.hook_post",
    "z": "attn.hook_z",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "pattern": "attn.hook_pattern",
}
# latents of an SAE (or a transcoder writing hook_mlp_out) spliced with ``model.saes``
SAE_KINDS = frozenset({"sae_resid_pre", "sae_resid_mid", "sae_resid_post", "sae_attn_out", "sae_mlp_out"})
HOOKS |= {kind: f"hook_{kind[4:]}.hook_sae_acts_post" for kind in sorted(SAE_KINDS)}
HEAD_KINDS = frozenset({"z", "q", "k", "v", "pattern"})
KV_KINDS = frozenset({"k", "v"})
MLP_KINDS = frozenset({"resid_mid", "mlp_out", "mlp_post"})  # absent from attention-only models


def check_kind(kind: str) -> None:
    """Raise ``ValueError`` naming the closest valid kinds if ``kind`` is not a site kind."""
    if kind not in HOOKS:
        close = difflib.get_close_matches(kind, list(HOOKS), n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown site kind {kind!r}{hint} (valid kinds: {', '.join(HOOKS)})")


@dataclass(frozen=True)
class PatchSite:
    """One patch cell.

    ``position`` is the (destination) position, ``None`` for all positions; ``head`` is a
    query head (a key/value head for ``k`` and ``v``), ``None`` for the whole layer;
    ``src_position`` (patterns only) picks one source position of the pattern row;
    ``neuron`` (``mlp_post`` only) picks one MLP neuron; ``feature`` (``sae_*`` kinds only)
    picks one latent of the SAE spliced at that hook.
    """

    kind: SiteKind
    layer: int
    position: int | None = None
    head: int | None = None
    src_position: int | None = None
    neuron: int | None = None
    feature: int | None = None

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.{HOOKS[self.kind]}"

    @property
    def first_position(self) -> int:
        """The earliest position the patch can change (causal attention: nothing before it)."""
        return self.position if self.position is not None else 0

    def validate(self, model, n_pos: int) -> None:
        """Raise ``ValueError`` if the site names a layer, head or position that does not exist."""
        arch = model.architecture
        check_kind(self.kind)
        if arch.attn_only and self.kind in MLP_KINDS:
            raise ValueError(
                f"{self}: {arch.model_name} is attention-only (no MLP, no resid_mid); "
                f"patch {', '.join(k for k in HOOKS if k not in MLP_KINDS)} instead"
            )
        if not 0 <= self.layer < arch.n_layers:
            raise ValueError(f"{self}: layer {self.layer} does not exist (model has {arch.n_layers} layers)")
        n_heads = arch.kv_heads if self.kind in KV_KINDS else arch.n_heads
        if self.head is not None and self.kind not in HEAD_KINDS:
            raise ValueError(f"{self}: {self.kind} has no head axis")
        if self.head is not None and not 0 <= self.head < n_heads:
            raise ValueError(f"{self}: head {self.head} does not exist ({self.kind} has {n_heads} heads)")
        if self.neuron is not None and (self.kind != "mlp_post" or not 0 <= self.neuron < arch.d_mlp):
            raise ValueError(f"{self}: neuron needs kind='mlp_post' and 0 <= neuron < {arch.d_mlp}")
        if self.kind in SAE_KINDS or self.feature is not None:
            self._validate_feature(model)
        for name, pos in (("position", self.position), ("src_position", self.src_position)):
            if pos is not None and not 0 <= pos < n_pos:
                raise ValueError(f"{self}: {name} {pos} does not exist (the prompts have {n_pos} positions)")
        if self.src_position is not None and (self.kind != "pattern" or self.position is None):
            raise ValueError(f"{self}: src_position needs kind='pattern' and a destination position")

    def _validate_feature(self, model) -> None:
        if self.kind not in SAE_KINDS:
            raise ValueError(f"{self}: feature needs an sae_* kind ({', '.join(sorted(SAE_KINDS))})")
        d_sae = spliced_width(model, self.hook_name)
        if self.feature is not None and not 0 <= self.feature < d_sae:
            raise ValueError(f"{self}: feature {self.feature} does not exist (the SAE has {d_sae} latents)")


def spliced_width(model, hook_name: str) -> int:
    """Latents of the SAE whose ``hook_sae_acts_post`` is ``hook_name``; an actionable error
    when no SAE is spliced there."""
    parent = hook_name.removesuffix(".hook_sae_acts_post")
    sae = getattr(model.hook_dict.get(parent), "spliced_sae", None)
    if sae is None:
        raise ValueError(
            f"no SAE is spliced at {parent}: run SAE-latent sweeps inside `with model.saes([sae]):`"
        )
    return sae.cfg.d_sae


@dataclass(frozen=True)
class SweepGrid:
    """The cells of a sweep in row-major order over ``axes``, with each axis' coordinates."""

    cells: list[PatchSite]
    axes: tuple[str, ...]
    coordinates: dict[str, tuple[int, ...]]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.coordinates[axis]) for axis in self.axes)


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A grid of patch cells of one kind.

    Attributes:
        kind: the activation patched.
        per_position: one cell per (destination) position; ``False`` patches all positions at once.
        per_head: one cell per head (head kinds only; ``False`` patches the whole layer's heads).
        per_src_position: patterns only, one cell per (destination, source) pair.
        per_neuron: ``mlp_post`` only, one cell per MLP neuron (for attribution patching;
            an exact sweep over every neuron is large).
        per_feature: ``sae_*`` kinds only, one cell per SAE latent (``per_position=False``:
            the latent patched at every position at once).
        layers / positions / heads / features: restrict the grid (``None`` = all).
    """

    kind: SiteKind
    per_position: bool = True
    per_head: bool = True
    per_src_position: bool = False
    per_neuron: bool = False
    per_feature: bool = False
    layers: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    features: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_kind(self.kind)

    def axes(self) -> tuple[str, ...]:
        """Result axes, in TransformerLens order."""
        has_head = self.kind in HEAD_KINDS and self.per_head
        if self.kind == "pattern":
            names = ["layer", "head"] if has_head else ["layer"]
            if self.per_position:
                names.append("dest_pos")
            if self.per_src_position:
                names.append("src_pos")
            return tuple(names)
        names = ["layer"]
        if self.per_position:
            names.append("pos")
        if has_head:
            names.append("head")
        if self.per_neuron:
            names.append("neuron")
        if self.per_feature:
            names.append("feature")
        return tuple(names)

    def enumerate(self, model, n_pos: int) -> SweepGrid:
        """The cells (row-major over ``axes``) with the grid's axes and coordinates."""
        if self.per_src_position and not (self.kind == "pattern" and self.per_position):
            raise ValueError("per_src_position needs kind='pattern' and per_position=True")
        if self.per_neuron and self.kind != "mlp_post":
            raise ValueError("per_neuron needs kind='mlp_post'")
        if self.per_feature and self.kind not in SAE_KINDS:
            raise ValueError(f"per_feature needs an sae_* kind ({', '.join(sorted(SAE_KINDS))})")
        if self.features is not None and not self.per_feature:
            raise ValueError("features= restricts the feature axis: set per_feature=True")
        arch = model.architecture
        n_heads = arch.kv_heads if self.kind in KV_KINDS else arch.n_heads
        ranges = {
            "layer": self.layers if self.layers is not None else tuple(range(arch.n_layers)),
            "pos": self.positions if self.positions is not None else tuple(range(n_pos)),
            "head": self.heads if self.heads is not None else tuple(range(n_heads)),
        }
        ranges["dest_pos"] = ranges["src_pos"] = ranges["pos"]
        ranges["neuron"] = tuple(range(arch.d_mlp))
        if self.per_feature:
            width = spliced_width(model, f"blocks.{ranges['layer'][0]}.{HOOKS[self.kind]}")
            ranges["feature"] = self.features if self.features is not None else tuple(range(width))
        axes = self.axes()
        cells = []
        for combo in itertools.product(*(ranges[a] for a in axes)):
            named = dict(zip(axes, combo, strict=True))
            site = PatchSite(
                kind=self.kind,
                layer=named["layer"],
                position=named.get("pos", named.get("dest_pos")),
                head=named.get("head"),
                src_position=named.get("src_pos"),
                neuron=named.get("neuron"),
                feature=named.get("feature"),
            )
            site.validate(model, n_pos)
            cells.append(site)
        return SweepGrid(cells, axes, {axis: tuple(ranges[axis]) for axis in axes})
