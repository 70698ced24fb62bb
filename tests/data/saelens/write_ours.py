"""Write SAELens folders with OUR writer, for ``check_ours.py`` to load in SAELens.

Runs in mechinterp's environment: ``python tests/data/saelens/write_ours.py OUT``. For every
architecture both libraries share it writes ``OUT/<name>/`` with ``SAE.save(format="saelens")``
and ``expected.safetensors`` holding our ``encode``/``decode``/``forward`` on fixed inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from mechinterp.sae import SAE, SAEConfig, load_sae

D_IN, D_SAE, D_OUT = 16, 32, 12
HERE = Path(__file__).parent
SHARED = {
    "relu": {"architecture": "relu", "apply_b_dec_to_input": True},
    "relu_norm": {"architecture": "relu", "normalize_activations": "constant_norm_rescale"},
    "relu_layer_norm": {"architecture": "relu", "normalize_activations": "layer_norm"},
    "jumprelu": {"architecture": "jumprelu", "apply_b_dec_to_input": True},
    "jumprelu_saelens": {"architecture": "jumprelu", "threshold_relu": True},
    "topk": {"architecture": "topk", "k": 4, "apply_b_dec_to_input": True},
    "gated": {"architecture": "gated", "apply_b_dec_to_input": True},
    "transcoder": {"architecture": "relu", "hook_name_out": "blocks.0.hook_mlp_out", "d_out": D_OUT},
    "jumprelu_transcoder": {
        "architecture": "jumprelu",
        "hook_name_out": "blocks.0.hook_mlp_out",
        "d_out": D_OUT,
    },
    "skip_transcoder": {
        "architecture": "relu",
        "hook_name_out": "blocks.0.hook_mlp_out",
        "d_out": D_OUT,
        "skip": True,
    },
    "jumprelu_skip_transcoder": {
        "architecture": "jumprelu",
        "threshold_relu": True,
        "hook_name_out": "blocks.0.hook_mlp_out",
        "d_out": D_OUT,
        "skip": True,
    },
}


@torch.no_grad()
def random_sae(name: str, generator: torch.Generator) -> SAE:
    cfg = SAEConfig(
        d_in=D_IN, d_sae=D_SAE, hook_name="blocks.0.hook_resid_post", model_name="tiny", **SHARED[name]
    )
    sae = SAE(cfg)
    for p in sae.parameters():
        p.copy_(torch.randn(p.shape, generator=generator) * (0.4 if p.ndim == 2 else 0.2))
    if cfg.architecture == "jumprelu":  # negative thresholds only where the form is SAELens'
        low = -0.3 if cfg.threshold_relu else 0.0
        sae.threshold.copy_(torch.rand(D_SAE, generator=generator) * 0.6 + low)
    return sae


@torch.no_grad()
def main(out: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, D_IN, generator=generator)
    saes = {name: random_sae(name, generator) for name in SHARED}
    # and what we loaded from SAELens's own folders goes back out
    saes |= {f"roundtrip_{p.name}": load_sae(p) for p in sorted(HERE.iterdir()) if (p / "cfg.json").is_file()}
    for name, sae in saes.items():
        sae.save(out / name, format="saelens")
        acts = sae.encode(x)
        save_file(
            {"x": x, "acts": acts, "recons": sae.decode(acts), "out": sae(x)},
            str(out / name / "expected.safetensors"),
        )
        print("wrote", out / name)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
