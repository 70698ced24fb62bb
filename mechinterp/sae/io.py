"""``load_sae``: read SAEs from public formats (SAELens folders, Gemma Scope ``params.npz``)
and our own (``SAE.save``).

- **SAELens** folder: ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``,
  ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``, plus ``threshold`` for JumpReLU and
  ``b_gate``/``b_mag``/``r_mag`` for gated SAEs). ``cfg.json`` names ``architecture``
  (``standard`` = our ``relu``), ``d_in``, ``d_sae``, ``k``, ``apply_b_dec_to_input``,
  ``normalize_activations`` and ``hook_name`` (top level, or under ``metadata`` in SAELens 6).
- **Gemma Scope** (Lieberum et al. 2024): ``params.npz`` with ``W_enc``, ``W_dec``, ``b_enc``,
  ``b_dec``, ``threshold``; JumpReLU on ``x @ W_enc + b_enc`` (the input is not centred by
  ``b_dec``). The file does not say which hook it belongs to: pass ``hook_name``.

Files are read as tensors only: ``np.load(..., allow_pickle=False)`` and safetensors, so
loading never runs code from the file.

Example:
    >>> sae = load_sae("downloads/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz",
    ...                hook_name="blocks.12.hook_resid_post")
    >>> sae = load_sae("downloads/saelens-folder")           # hook name read from cfg.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from mechinterp.sae.model import CONFIG_FILE, SAE, SAEConfig, from_tensors

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
GEMMA_SCOPE_FILE = "params.npz"
SAELENS_ARCHITECTURES = {
    "standard": "relu",
    "relu": "relu",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "gated": "gated",
}
# SAELens' "expected_average_only_in" scales inputs by a factor kept outside the folder
# (SAELens folds it into the weights before saving); at run time it is the identity.
SAELENS_NORMALIZATIONS = {
    "none": "none",
    None: "none",
    "expected_average_only_in": "none",
    "constant_norm_rescale": "constant_norm_rescale",
    "layer_norm": "layer_norm",
}


def load_sae(
    path: str | Path, hook_name: str | None = None, *, device=None, dtype: torch.dtype | None = None
) -> SAE:
    """Load an SAE from a SAELens folder, a Gemma Scope ``params.npz`` (or a folder holding
    one), or a folder written by ``SAE.save``.

    ``hook_name`` overrides the hook named in the files (and is required for Gemma Scope).
    Errors name the file and what is wrong: a missing config field or weight, a weight of
    the wrong shape, an unknown architecture.
    """
    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        sae = SAE.load(path, device=device, dtype=dtype)
        return sae.with_config(hook_name=hook_name) if hook_name is not None else sae
    if path.is_dir() and (path / SAELENS_CONFIG).is_file():
        return _load_saelens(path, hook_name, device, dtype)
    npz = path / GEMMA_SCOPE_FILE if path.is_dir() else path
    if npz.suffix == ".npz" and npz.is_file():
        return _load_gemma_scope(npz, hook_name, device, dtype)
    if not path.exists():
        raise FileNotFoundError(f"no SAE at {path}")
    raise ValueError(
        f"{path} is not an SAE: expected a SAELens folder ({SAELENS_CONFIG} + {SAELENS_WEIGHTS}), "
        f"a Gemma Scope {GEMMA_SCOPE_FILE}, or a folder written by SAE.save ({CONFIG_FILE})"
    )


def _load_saelens(folder: Path, hook_name: str | None, device, dtype) -> SAE:
    cfg_file = folder / SAELENS_CONFIG
    raw = json.loads(cfg_file.read_text())
    metadata = raw.get("metadata") or {}

    def field(name: str, default=KeyError):
        if name in raw:
            return raw[name]
        if name in metadata:
            return metadata[name]
        if default is KeyError:
            raise KeyError(f"{cfg_file}: missing field {name!r}")
        return default

    arch_name = field("architecture", "standard")
    if arch_name not in SAELENS_ARCHITECTURES:
        raise ValueError(
            f"{cfg_file}: architecture {arch_name!r} is not supported; "
            f"supported: {', '.join(SAELENS_ARCHITECTURES)}"
        )
    norm_name = field("normalize_activations", "none")
    if norm_name not in SAELENS_NORMALIZATIONS:
        raise ValueError(
            f"{cfg_file}: normalize_activations={norm_name!r} is not supported; "
            f"supported: {', '.join(str(n) for n in SAELENS_NORMALIZATIONS if n)}"
        )
    if field("rescale_acts_by_decoder_norm", False):
        raise ValueError(f"{cfg_file}: rescale_acts_by_decoder_norm=True TopK SAEs are not supported")
    hook = hook_name or field("hook_name", None)
    if hook is None:
        raise KeyError(f"{cfg_file}: no hook_name (top level or under metadata); pass hook_name=")
    architecture = SAELENS_ARCHITECTURES[arch_name]
    hook_out = field("hook_name_out", None)
    cfg = SAEConfig(
        architecture=architecture,
        d_in=int(field("d_in")),
        d_sae=int(field("d_sae")),
        d_out=int(field("d_out")) if field("d_out", None) is not None else None,
        hook_name=hook,
        hook_name_out=hook_out,
        k=int(field("k")) if architecture == "topk" else None,
        apply_b_dec_to_input=bool(field("apply_b_dec_to_input", False)),
        normalize_activations=SAELENS_NORMALIZATIONS[norm_name],
        model_name=field("model_name", None),
    )
    weights_file = folder / SAELENS_WEIGHTS
    if not weights_file.is_file():
        raise FileNotFoundError(f"{folder} has {SAELENS_CONFIG} but no {SAELENS_WEIGHTS}")
    tensors = load_file(str(weights_file))
    scaling = tensors.pop("scaling_factor", None)  # old SAELens fine-tuning scale on the latents
    if scaling is not None and not torch.all(scaling == 1):
        raise ValueError(f"{weights_file}: a scaling_factor other than 1 is not supported")
    if architecture == "gated" and "b_gate" in tensors:  # our gated SAE keeps the gate bias in b_enc
        tensors["b_enc"] = tensors.pop("b_gate")
    return from_tensors(cfg, tensors, source=str(weights_file), device=device, dtype=dtype)


def _load_gemma_scope(npz: Path, hook_name: str | None, device, dtype) -> SAE:
    if hook_name is None:
        raise ValueError(
            f"{npz}: Gemma Scope files do not record their hook; pass hook_name= "
            "(e.g. 'blocks.12.hook_resid_post' for a residual-stream SAE of layer 12)"
        )
    with np.load(npz, allow_pickle=False) as archive:
        tensors = {name: torch.from_numpy(np.asarray(archive[name])) for name in archive.files}
    if "W_enc" not in tensors or tensors["W_enc"].ndim != 2:
        raise KeyError(f"{npz}: missing a 2-D W_enc (found: {', '.join(sorted(tensors))})")
    d_in, d_sae = tensors["W_enc"].shape
    cfg = SAEConfig(architecture="jumprelu", d_in=int(d_in), d_sae=int(d_sae), hook_name=hook_name)
    return from_tensors(cfg, tensors, source=str(npz), device=device, dtype=dtype)
