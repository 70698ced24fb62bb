"""Transcoders for attribution graphs (``circuits.tracing.transcoders``): circuit-tracer's CLT
layout, our / SAELens SAE transcoders and Gemma Scope folders load into the same ``Transcoder``."""

from __future__ import annotations

import numpy
import pytest
import torch
from safetensors.torch import save_file
from test_tracing import PROMPT, _close

from circuits.tracing import Replacement, Transcoder, load_transcoders, random_transcoders
from mechinterp.sae import SAE, SAEConfig


def test_circuit_tracer_layout_and_sae_transcoders_load(tiny_llama, tmp_path):
    model = tiny_llama
    tc = random_transcoders(model, 8, kind="clt", seed=4)
    folder = tmp_path / "clt"
    folder.mkdir()
    for layer in range(tc.n_layers):
        encoder = {
            f"W_enc_{layer}": tc.W_enc[layer].contiguous(),
            f"b_enc_{layer}": tc.b_enc[layer].contiguous(),
            f"b_dec_{layer}": tc.b_dec[layer].contiguous(),
            f"threshold_{layer}": tc.threshold[layer].contiguous(),
        }
        save_file(encoder, str(folder / f"W_enc_{layer}.safetensors"))
        save_file(
            {f"W_dec_{layer}": tc.W_dec[layer].contiguous()}, str(folder / f"W_dec_{layer}.safetensors")
        )
    loaded = load_transcoders(folder)
    assert loaded.kind == "clt" and loaded.activation == "jumprelu" and loaded.widths == tc.widths
    assert all(torch.equal(a, b) for a, b in zip(loaded.W_dec, tc.W_dec, strict=True))
    tokens = model.to_tokens(PROMPT)
    assert torch.equal(
        Replacement(model, loaded, tokens).active.index, Replacement(model, tc, tokens).active.index
    )
    with pytest.raises(KeyError, match="W_enc_0"):
        Transcoder.from_circuit_tracer({"W_dec_0": tc.W_dec[0]})

    saes = []
    for layer in range(model.architecture.n_layers):
        cfg = SAEConfig(
            architecture="topk",
            k=3,
            d_in=64,
            d_sae=10,
            hook_name=f"blocks.{layer}.hook_mlp_in",
            hook_name_out=f"blocks.{layer}.hook_mlp_out",
            apply_b_dec_to_input=True,
        )
        sae = SAE.create(cfg, seed=layer)
        with torch.no_grad():
            sae.b_dec.normal_(generator=torch.Generator().manual_seed(layer))
        saes.append(sae)
    plt = load_transcoders(saes)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    for layer, sae in enumerate(saes):
        acts = plt.encode(layer, x)
        assert torch.allclose(acts, sae.encode(x), atol=1e-5)
        decoded = plt.decode(layer, [acts if source == layer else 0 * acts for source in range(len(saes))])
        assert torch.allclose(decoded, sae.decode(acts), atol=1e-5)
    wrong = SAE.create(SAEConfig(architecture="relu", d_in=64, d_sae=4, hook_name="blocks.0.hook_resid_post"))
    with pytest.raises(ValueError, match="not a transcoder"):
        load_transcoders([wrong])


def test_gemma_scope_transcoder_folders_load_one_per_layer(tiny_llama, tmp_path):
    """Gemma Scope's layout: layer_<l>/width_<w>/average_l0_<n>/params.npz, W_enc [d_model, d_tc]."""
    model = tiny_llama
    tc = random_transcoders(model, 6, kind="plt", input_site="mlp_normalized", seed=5)
    for layer in range(tc.n_layers):
        folder = tmp_path / "scope" / f"layer_{layer}" / "width_6" / f"average_l0_{3 + layer}"
        folder.mkdir(parents=True)
        arrays = {
            "W_enc": tc.W_enc[layer].T,
            "b_enc": tc.b_enc[layer],
            "W_dec": tc.W_dec[layer][:, 0],
            "b_dec": tc.b_dec[layer],
            "threshold": tc.threshold[layer],
        }
        numpy.savez(folder / "params.npz", **{name: t.detach().numpy() for name, t in arrays.items()})
    loaded = load_transcoders(tmp_path / "scope")
    assert loaded.kind == "plt" and loaded.activation == "jumprelu" and loaded.input_site == "mlp_normalized"
    tokens = model.to_tokens(PROMPT)
    assert _close(
        Replacement(model, loaded, tokens).active.value, Replacement(model, tc, tokens).active.value
    )
    extra = tmp_path / "scope" / "layer_1" / "width_6" / "average_l0_9"
    extra.mkdir()
    (extra / "params.npz").write_bytes(
        (tmp_path / "scope/layer_1/width_6/average_l0_4/params.npz").read_bytes()
    )
    with pytest.raises(ValueError, match="layer 1 has 2 transcoders"):
        load_transcoders(tmp_path / "scope")
