"""Write tiny SAELens folders and their expected outputs into tests/data/saelens/.

Runs ONLY in an environment with SAELens 6.54 (it pins transformer-lens < 4, so it cannot
share an environment with mechinterp); nothing in mechinterp or its tests imports it. See
README.md beside this file for the commands.

Each folder ``<name>/`` holds what SAELens itself writes (``cfg.json``,
``sae_weights.safetensors``) and ``expected.safetensors``: fixed inputs ``x`` and SAELens's
``acts = sae.encode(x)``, ``recons = sae.decode(acts)`` and ``out = sae(x)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from sae_lens import SAE
from sae_lens.analysis.hooked_sae_transformer import _SAEWrapper
from sae_lens.saes import (
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    Transcoder,
    TranscoderConfig,
)
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

D_IN, D_SAE, D_OUT, K = 16, 32, 12, 4
HOOK = "blocks.0.hook_resid_post"
HOOK_IN, HOOK_OUT = "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"
HERE = Path(__file__).parent


def metadata(transcoder: bool = False) -> SAEMetadata:
    if transcoder:
        return SAEMetadata(model_name="tiny", hook_name=HOOK_IN, hook_name_out=HOOK_OUT)
    return SAEMetadata(model_name="tiny", hook_name=HOOK)


@torch.no_grad()
def randomise(sae, generator: torch.Generator) -> None:
    """Random weights with decoder rows of non-unit norm, biases and thresholds that matter."""
    for p in sae.parameters():
        scale = 0.4 if p.ndim == 2 else 0.2
        p.copy_(torch.randn(p.shape, generator=generator) * scale)
    if hasattr(sae, "threshold"):  # some negative thresholds: the conventions differ there
        t = torch.rand(D_SAE, generator=generator) * 0.4
        t[: D_SAE // 4] = -torch.rand(D_SAE // 4, generator=generator) * 0.3
        sae.threshold.copy_(t)


def builders() -> dict:
    return {
        "standard": lambda: StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=metadata())),
        "standard_no_bdec": lambda: StandardSAE(
            StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False, metadata=metadata())
        ),
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=metadata())),
        "topk": lambda: TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, metadata=metadata())),
        "gated": lambda: GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=metadata())),
        "transcoder": lambda: Transcoder(
            TranscoderConfig(
                d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False, metadata=metadata(True)
            )
        ),
        "jumprelu_transcoder": lambda: JumpReLUTranscoder(
            JumpReLUTranscoderConfig(
                d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False, metadata=metadata(True)
            )
        ),
        "skip_transcoder": lambda: SkipTranscoder(
            SkipTranscoderConfig(
                d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False, metadata=metadata(True)
            )
        ),
    }


@torch.no_grad()
def expected(sae, x: torch.Tensor) -> dict[str, torch.Tensor]:
    acts = sae.encode(x)
    return {"x": x, "acts": acts, "recons": sae.decode(acts), "out": sae(x)}


@torch.no_grad()
def main() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, D_IN, generator=generator)
    for name, build in builders().items():
        sae = build()
        randomise(sae, generator)
        folder = HERE / name
        sae.save_model(folder)
        back = SAE.load_from_disk(folder)  # what a SAELens user gets from the folder
        save_file(expected(back, x), str(folder / "expected.safetensors"))
        print("wrote", folder)

    # A TopK SAE as SAELens's trainer leaves it: rescale_acts_by_decoder_norm=True, decoder
    # rows of any norm during training; save_inference_model folds the norms into the file.
    trained = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, metadata=metadata()))
    randomise(trained, generator)
    trained.W_dec.mul_(torch.rand(D_SAE, 1, generator=generator) * 2 + 0.5)
    folder = HERE / "topk_trained"
    trained.save_inference_model(folder)
    back = SAE.load_from_disk(folder)
    save_file(expected(back, x), str(folder / "expected.safetensors"))
    # The same SAE before saving gives the same outputs (the fold is exact).
    torch.testing.assert_close(back.encode(x), trained.encode(x), atol=1e-5, rtol=1e-5)
    print("wrote", folder)

    # The hook points HookedSAETransformer puts under a spliced SAE's hook (the cache keys of
    # run_with_cache_with_saes are "{hook}.<name>"), and what each holds on one input.
    sae = SAE.load_from_disk(HERE / "standard")
    wrapper = _SAEWrapper(sae, use_error_term=True)
    names = sorted(n for n, m in wrapper.named_modules() if type(m).__name__ == "HookPoint")
    values = {}
    for name in names:
        getattr(wrapper, name).add_hook(lambda t, hook, name=name: values.__setitem__(name, t.clone()))
    wrapper(x)
    (HERE / "splice_hooks.json").write_text(json.dumps(names) + "\n")
    save_file(values, str(HERE / "standard" / "splice_values.safetensors"))
    print("hook points:", names)


if __name__ == "__main__":
    sys.exit(main())
