"""``load_sae``: read SAEs from public formats (SAELens folders, Gemma Scope ``params.npz``)
and our own (``SAE.save``).

- **SAELens** folder: ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``,
  ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``, plus ``threshold`` for JumpReLU,
  ``b_gate``/``b_mag``/``r_mag`` for gated SAEs and ``W_skip`` for skip transcoders).
  ``cfg.json`` names ``architecture`` (``standard``, ``jumprelu``, ``topk``, ``gated``,
  ``transcoder``, ``jumprelu_transcoder``, ``skip_transcoder``, ``jumprelu_skip_transcoder``;
  see ``mechinterp.sae.saelens_format``), ``d_in``, ``d_sae``, ``d_out``, ``k``,
  ``apply_b_dec_to_input``, ``normalize_activations``, ``hook_name`` and ``hook_name_out``
  (top level, or under ``metadata`` in SAELens 6). JumpReLU follows SAELens' form
  ``relu(pre) * (pre > threshold)``; a TopK with ``rescale_acts_by_decoder_norm`` (as
  SAELens' trainer saves it) has its decoder norms folded in (``fold_decoder_norms``).
- **Gemma Scope** (Lieberum et al. 2024): ``params.npz`` with ``W_enc``, ``W_dec``, ``b_enc``,
  ``b_dec``, ``threshold``; JumpReLU on ``x @ W_enc + b_enc`` (the input is not centred by
  ``b_dec``), in the paper's form ``pre * (pre > threshold)``. The file does not say which
  hook it belongs to: pass ``hook_name``.

Files are read as tensors only: ``np.load(..., allow_pickle=False)`` and safetensors, so
loading never runs code from the file. A damaged file raises an error naming it and what is
wrong (``mechinterp.sae.files``); weights holding NaN or infinity are refused.

Example:
    >>> sae = load_sae("downloads/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz",
    ...                hook_name="blocks.12.hook_resid_post")
    >>> sae = load_sae("downloads/saelens-folder")           # hook name read from cfg.json
"""

from __future__ import annotations

from pathlib import Path

import torch

from mechinterp.sae.files import read_json, read_npz, read_safetensors
from mechinterp.sae.model import CONFIG_FILE, SAE, SAEConfig, from_tensors
from mechinterp.sae.saelens_format import ARCHITECTURES as SAELENS_ARCHITECTURES
from mechinterp.sae.saelens_format import CONFIG_FILE as SAELENS_CONFIG
from mechinterp.sae.saelens_format import NORMALIZATIONS as SAELENS_NORMALIZATIONS
from mechinterp.sae.saelens_format import WEIGHTS_FILE as SAELENS_WEIGHTS

GEMMA_SCOPE_FILE = "params.npz"


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
    raw = read_json(cfg_file)
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
    architecture, transcoder, skip = SAELENS_ARCHITECTURES[arch_name]
    norm_name = field("normalize_activations", "none")
    if norm_name not in SAELENS_NORMALIZATIONS:
        raise ValueError(
            f"{cfg_file}: normalize_activations={norm_name!r} is not supported; "
            f"supported: {', '.join(str(n) for n in SAELENS_NORMALIZATIONS if n)}"
        )
    if transcoder and SAELENS_NORMALIZATIONS[norm_name] != "none":
        raise ValueError(
            f"{cfg_file}: a transcoder with normalize_activations={norm_name!r} is not supported "
            "(SAELens does not undo the normalisation on a transcoder's output)"
        )
    hook = hook_name or field("hook_name", None)
    if hook is None:
        raise KeyError(f"{cfg_file}: no hook_name (top level or under metadata); pass hook_name=")
    hook_out = field("hook_name_out", None)
    if transcoder and hook_out is None:
        raise KeyError(f"{cfg_file}: a {arch_name} needs hook_name_out (top level or under metadata)")
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
        threshold_relu=architecture == "jumprelu",
        skip=skip,
    )
    weights_file = folder / SAELENS_WEIGHTS
    if not weights_file.is_file():
        raise FileNotFoundError(f"{folder} has {SAELENS_CONFIG} but no {SAELENS_WEIGHTS}")
    tensors = read_safetensors(weights_file)
    scaling = tensors.pop("scaling_factor", None)  # old SAELens fine-tuning scale on the latents
    if scaling is not None and not torch.all(scaling == 1):
        raise ValueError(f"{weights_file}: a scaling_factor other than 1 is not supported")
    if architecture == "gated" and "b_gate" in tensors:  # our gated SAE keeps the gate bias in b_enc
        tensors["b_enc"] = tensors.pop("b_gate")
    if field("rescale_acts_by_decoder_norm", False):
        if architecture != "topk":
            raise ValueError(f"{cfg_file}: rescale_acts_by_decoder_norm is only defined for topk SAEs")
        tensors = fold_decoder_norms(tensors)
    return from_tensors(cfg, tensors, source=str(weights_file), device=device, dtype=dtype)


def fold_decoder_norms(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAELens' ``rescale_acts_by_decoder_norm`` TopK, folded into plain weights.

    SAELens computes ``pre = (x @ W_enc + b_enc) * n`` and decodes ``(acts / n) @ W_dec``
    with ``n`` the decoder row norms. With ``W_enc * n``, ``b_enc * n`` and ``W_dec / n``
    a plain TopK SAE gives the same latents and reconstruction exactly (up to float
    rounding). Files written by SAELens' ``save_inference_model`` already have unit-norm
    rows (SAELens folds on save), so there this changes nothing beyond rounding.
    """
    norms = tensors["W_dec"].norm(dim=-1)
    if bool((norms == 0).any()):
        raise ValueError("rescale_acts_by_decoder_norm with a zero decoder row cannot be folded")
    return tensors | {
        "W_enc": tensors["W_enc"] * norms,
        "b_enc": tensors["b_enc"] * norms,
        "W_dec": tensors["W_dec"] / norms[:, None],
    }


def _load_gemma_scope(npz: Path, hook_name: str | None, device, dtype) -> SAE:
    if hook_name is None:
        raise ValueError(
            f"{npz}: Gemma Scope files do not record their hook; pass hook_name= "
            "(e.g. 'blocks.12.hook_resid_post' for a residual-stream SAE of layer 12)"
        )
    tensors = read_npz(npz)
    if "W_enc" not in tensors or tensors["W_enc"].ndim != 2:
        raise KeyError(f"{npz}: missing a 2-D W_enc (found: {', '.join(sorted(tensors))})")
    d_in, d_sae = tensors["W_enc"].shape
    cfg = SAEConfig(architecture="jumprelu", d_in=int(d_in), d_sae=int(d_sae), hook_name=hook_name)
    return from_tensors(cfg, tensors, source=str(npz), device=device, dtype=dtype)
