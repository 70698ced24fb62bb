"""SAELens 6 folders: the architecture names and the writer (``SAE.save(format="saelens")``).

A SAELens folder holds ``cfg.json`` and ``sae_weights.safetensors``. Its architectures map to
ours as (our architecture, transcoder?, skip connection?):

    standard -> relu              transcoder -> relu, transcoder
    jumprelu -> jumprelu          jumprelu_transcoder -> jumprelu, transcoder
    topk -> topk                  skip_transcoder -> relu, transcoder, skip
    gated -> gated                jumprelu_skip_transcoder -> jumprelu, transcoder, skip

SAELens' JumpReLU is ``relu(pre) * (pre > threshold)`` (``SAEConfig.threshold_relu``), its
gated SAE stores the gate bias as ``b_gate`` (ours: ``b_enc``), and transcoders keep
``hook_name_out`` under ``metadata`` beside ``hook_name``. The writer refuses what SAELens
cannot represent (a TopK or gated transcoder, a JumpReLU of the paper's form with negative
thresholds, a normalising transcoder) rather than write a file that computes something else.

SAELens itself is never imported: it pins ``transformer-lens < 4`` and cannot share an
environment with this package. Files cross; libraries don't (``tests/data/saelens/README.md``
shows both directions checked against SAELens 6.54 in an environment of its own).

Example:
    >>> sae.save("runs/sae-for-saelens", format="saelens")
    >>> # in a SAELens environment: sae_lens.SAE.load_from_disk("runs/sae-for-saelens")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file
from torch import Tensor

if TYPE_CHECKING:
    from mechinterp.sae.model import SAEConfig

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# SAELens name -> (our architecture, is a transcoder, has a skip connection)
ARCHITECTURES: dict[str, tuple[str, bool, bool]] = {
    "standard": ("relu", False, False),
    "relu": ("relu", False, False),
    "jumprelu": ("jumprelu", False, False),
    "topk": ("topk", False, False),
    "gated": ("gated", False, False),
    "transcoder": ("relu", True, False),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "skip_transcoder": ("relu", True, True),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}
# SAELens' "expected_average_only_in" scales inputs by a factor kept outside the folder
# (SAELens folds it into the weights before saving); at run time it is the identity.
NORMALIZATIONS = {
    "none": "none",
    None: "none",
    "expected_average_only_in": "none",
    "constant_norm_rescale": "constant_norm_rescale",
    "layer_norm": "layer_norm",
}


def saelens_architecture(cfg: SAEConfig) -> str:
    """The SAELens architecture name of an SAE of config ``cfg``; ``ValueError`` if none fits."""
    for name, spec in ARCHITECTURES.items():
        if name != "relu" and spec == (cfg.architecture, cfg.is_transcoder, cfg.skip):
            return name
    kind = "transcoder" if cfg.is_transcoder else "SAE"
    raise ValueError(
        f"SAELens has no {cfg.architecture} {kind}{' with a skip connection' if cfg.skip else ''}; "
        f"it supports: {', '.join(n for n in ARCHITECTURES if n != 'relu')}. "
        "Save it in our format (format='mechinterp') instead"
    )


def saelens_config(cfg: SAEConfig, dtype: str) -> dict:
    """The ``cfg.json`` SAELens 6 writes for the same SAE (same keys, same layout)."""
    architecture = saelens_architecture(cfg)
    if cfg.is_transcoder and cfg.normalize_activations != "none":
        raise ValueError(
            "SAELens transcoders do not undo input normalisation on their output; "
            f"a transcoder with normalize_activations={cfg.normalize_activations!r} cannot be saved for SAELens"
        )
    metadata = {"model_name": cfg.model_name, "hook_name": cfg.hook_name}
    if cfg.is_transcoder:
        metadata["hook_name_out"] = cfg.hook_name_out
    out = {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": "hook_z" if cfg.hook_name.endswith("hook_z") else "none",
        "metadata": metadata,
    }
    if cfg.architecture == "topk":
        out |= {"k": cfg.k, "rescale_acts_by_decoder_norm": False}
    if cfg.is_transcoder:
        out["d_out"] = cfg.width_out
    out["architecture"] = architecture
    return out


def write_saelens(folder: Path, cfg: SAEConfig, tensors: dict[str, Tensor]) -> Path:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` for SAELens 6 into ``folder``.

    ``tensors`` are our parameters (on the CPU). Raises ``ValueError`` for an SAE SAELens
    would compute differently (see the module docstring).
    """
    dtype = str(tensors["W_enc"].dtype).removeprefix("torch.")
    config = saelens_config(cfg, dtype)
    if cfg.architecture == "jumprelu" and not cfg.threshold_relu and bool((tensors["threshold"] < 0).any()):
        raise ValueError(
            "this JumpReLU SAE computes pre * (pre > threshold) and has negative thresholds; SAELens "
            "computes relu(pre) * (pre > threshold), which differs there, so it cannot be saved for SAELens"
        )
    tensors = dict(tensors)
    if cfg.architecture == "gated":
        tensors["b_gate"] = tensors.pop("b_enc")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder
