"""SAEs: public file formats read exactly, splicing, latents as patching sites, features.

SAELens folders and Gemma Scope ``params.npz`` files are written here by hand (safetensors /
numpy, in the formats' documented layouts), and encoded/decoded by a literal numpy
implementation of each architecture, independent of ``mechinterp.sae``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from mechinterp.metrics import LogitDifference
from mechinterp.patching import SweepSpec, attribution_patch, patch_sweep
from mechinterp.sae import (
    SAE,
    SAEConfig,
    ablate_features,
    feature_dla,
    feature_logit_effects,
    load_sae,
    steer,
    top_features,
)

D_MODEL, D_SAE = 64, 96
HOOK = "blocks.1.hook_resid_pre"


def _weights(arch: str, seed: int = 0, d_in: int = D_MODEL, d_sae: int = D_SAE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {
        "W_enc": rng.normal(0, 0.3, (d_in, d_sae)).astype(np.float32),
        "b_enc": rng.normal(0, 0.2, d_sae).astype(np.float32),
        "W_dec": rng.normal(0, 0.3, (d_sae, d_in)).astype(np.float32),
        "b_dec": rng.normal(0, 0.2, d_in).astype(np.float32),
    }
    if arch == "jumprelu":
        w["threshold"] = rng.uniform(0.0, 0.5, d_sae).astype(np.float32)
    if arch == "gated":
        w["b_gate"] = w.pop("b_enc")
        w["b_mag"] = rng.normal(0, 0.2, d_sae).astype(np.float32)
        w["r_mag"] = rng.normal(0, 0.2, d_sae).astype(np.float32)
    return w


def _reference_encode(w, arch, x, *, apply_b_dec, k=None):
    """Literal numpy encoders of the SAELens / Gemma Scope architectures."""
    x = x - w["b_dec"] if apply_b_dec else x
    if arch == "gated":
        gate = x @ w["W_enc"] + w["b_gate"]
        mag = x @ (w["W_enc"] * np.exp(w["r_mag"])) + w["b_mag"]
        return (gate > 0) * np.maximum(mag, 0)
    pre = x @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        return np.maximum(pre, 0)
    if arch == "jumprelu":
        return pre * (pre > w["threshold"])
    out = np.zeros_like(pre)
    top = np.argsort(-pre, axis=-1)[..., :k]
    np.put_along_axis(out, top, np.maximum(np.take_along_axis(pre, top, -1), 0), -1)
    return out


def _write_saelens(folder, arch, *, nested: bool, apply_b_dec=True, k=None, hook=HOOK, weights=None, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    w = weights if weights is not None else _weights(arch)
    save_file(w, str(folder / "sae_weights.safetensors"))
    cfg = {
        "architecture": arch,
        "d_in": w["W_enc"].shape[0],
        "d_sae": w["W_enc"].shape[1],
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": "none",
        **extra,
    }
    if k is not None:
        cfg["k"] = k
    if nested:  # SAELens 6: model and hook facts under "metadata"
        cfg["metadata"] = {"model_name": "tiny", "hook_name": hook, "hook_head_index": None}
    else:
        cfg["hook_name"] = hook
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return w


@pytest.mark.parametrize(
    ("arch", "k", "nested", "apply_b_dec"),
    [
        ("standard", None, False, True),
        ("jumprelu", None, True, False),
        ("topk", 8, True, True),
        ("gated", None, False, True),
    ],
)
def test_saelens_folder_encodes_and_decodes_exactly(tmp_path, arch, k, nested, apply_b_dec):
    w = _write_saelens(tmp_path / "sae", arch, nested=nested, apply_b_dec=apply_b_dec, k=k)
    sae = load_sae(tmp_path / "sae")
    x = np.random.default_rng(1).normal(0, 1, (5, 7, D_MODEL)).astype(np.float32)
    acts = _reference_encode(w, arch, x, apply_b_dec=apply_b_dec, k=k)
    assert sae.hook_name == HOOK
    assert (acts > 0).any() and (acts == 0).any()
    torch.testing.assert_close(
        sae.encode(torch.from_numpy(x)), torch.from_numpy(acts).float(), atol=1e-4, rtol=1e-4
    )
    recon = acts @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(
        sae.decode(torch.from_numpy(acts).float()), torch.from_numpy(recon), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("mode", ["constant_norm_rescale", "layer_norm"])
def test_saelens_normalisations_follow_the_documented_formulas(tmp_path, mode):
    w = _write_saelens(tmp_path / "n", "standard", nested=False, normalize_activations=mode)
    sae = load_sae(tmp_path / "n")
    x = np.random.default_rng(2).normal(1, 3, (4, D_MODEL)).astype(np.float32)
    if mode == "constant_norm_rescale":
        coeff = np.sqrt(D_MODEL) / np.linalg.norm(x, axis=-1, keepdims=True)
        normed, undo = x * coeff, lambda y: y / coeff
    else:
        mu, std = x.mean(-1, keepdims=True), x.std(-1, ddof=1, keepdims=True)
        normed, undo = (x - mu) / (std + 1e-5), lambda y: y * std + mu
    acts = _reference_encode(w, "standard", normed, apply_b_dec=True)
    expected = undo(acts @ w["W_dec"] + w["b_dec"]).astype(np.float32)
    torch.testing.assert_close(sae(torch.from_numpy(x)), torch.from_numpy(expected), atol=1e-4, rtol=1e-4)


def test_gemma_scope_npz_is_jumprelu_without_input_centring(tmp_path):
    w = _weights("jumprelu", seed=3)
    np.savez(tmp_path / "params.npz", **w)
    sae = load_sae(tmp_path / "params.npz", hook_name=HOOK)
    x = np.random.default_rng(4).normal(0, 1, (6, D_MODEL)).astype(np.float32)
    acts = _reference_encode(w, "jumprelu", x, apply_b_dec=False)
    torch.testing.assert_close(sae.encode(torch.from_numpy(x)), torch.from_numpy(acts), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        sae(torch.from_numpy(x)), torch.from_numpy(acts @ w["W_dec"] + w["b_dec"]), atol=1e-4, rtol=1e-4
    )
    assert load_sae(tmp_path, hook_name=HOOK).cfg == sae.cfg  # a folder holding params.npz


def test_own_format_round_trip_and_moves(tmp_path):
    sae = SAE.create(SAEConfig(architecture="topk", k=4, d_in=D_MODEL, d_sae=D_SAE, hook_name=HOOK), seed=5)
    sae.save(tmp_path / "mine")
    back = load_sae(tmp_path / "mine")
    assert back.cfg == sae.cfg
    x = torch.randn(3, D_MODEL)
    torch.testing.assert_close(back(x), sae(x))
    half = back.to(torch.float64)
    assert half.dtype == torch.float64 and half.encode(x).dtype == torch.float64


def test_bad_files_give_specific_errors(tmp_path, tiny_llama):
    w = _weights("standard")
    del w["b_dec"]
    _write_saelens(tmp_path / "missing", "standard", nested=False, weights=w)
    with pytest.raises(KeyError, match="missing b_dec"):
        load_sae(tmp_path / "missing")
    bad = _weights("jumprelu")
    bad["W_dec"] = bad["W_dec"][:, :10]
    np.savez(tmp_path / "params.npz", **bad)
    with pytest.raises(ValueError, match=r"W_dec has shape \(96, 10\), expected \(96, 64\)"):
        load_sae(tmp_path / "params.npz", hook_name=HOOK)
    skip = _weights("standard")
    skip["W_skip"] = np.zeros((D_MODEL, D_MODEL), np.float32)
    _write_saelens(tmp_path / "skip", "standard", nested=False, weights=skip)
    with pytest.raises(ValueError, match="unsupported parameters W_skip"):
        load_sae(tmp_path / "skip")
    np.savez(tmp_path / "ok.npz", **_weights("jumprelu"))
    with pytest.raises(ValueError, match="pass hook_name"):
        load_sae(tmp_path / "ok.npz")
    np.savez(tmp_path / "obj.npz", W_enc=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="pickle"):  # object arrays are never unpickled
        load_sae(tmp_path / "obj.npz", hook_name=HOOK)
    other = SAE.create(SAEConfig(architecture="relu", d_in=32, d_sae=8, hook_name=HOOK))
    with (
        pytest.raises(ValueError, match=r"d_in=32 does not fit blocks.1.hook_resid_pre .* 64"),
        tiny_llama.saes([other]),
    ):
        pass
    with (
        pytest.raises(ValueError, match="unknown hook name"),
        tiny_llama.saes([other.with_config(hook_name="blocks.9.x")]),
    ):
        pass
    assert not [n for n in tiny_llama.hook_dict if "sae" in n]


def _sae(arch="topk", hook=HOOK, seed=0, **kw):
    cfg = SAEConfig(
        architecture=arch, d_in=D_MODEL, d_sae=D_SAE, hook_name=hook, k=8 if arch == "topk" else None, **kw
    )
    sae = SAE.create(cfg, seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    return sae


def test_splicing_with_and_without_error_term(tiny_llama, random_tokens):
    model, tokens = tiny_llama, random_tokens(3, 12)
    sae = _sae()
    clean = model(tokens)
    with model.saes([sae], use_error_term=True):
        logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, clean, atol=1e-3, rtol=0)
    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    assert acts.shape == (3, 12, D_SAE) and ((acts > 0).sum(-1) <= 8).all()
    torch.testing.assert_close(
        cache[f"{HOOK}.hook_sae_recons"] + cache[f"{HOOK}.hook_sae_error"], cache[f"{HOOK}.hook_sae_input"]
    )

    def reconstruct(x, hook):  # hand-written: x -> relu-topk encode -> decode
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        top = pre.topk(8, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()) @ sae.W_dec + sae.b_dec

    expected = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, reconstruct)])
    with model.saes([sae]):
        spliced = model(tokens)
    torch.testing.assert_close(spliced, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(spliced, clean, atol=1e-3)
    assert not [n for n in model.hook_dict if "sae" in n]
    with pytest.raises(RuntimeError, match="boom"), model.saes([sae]):
        raise RuntimeError("boom")
    torch.testing.assert_close(model(tokens), clean)


def test_ablating_a_feature_keeps_the_error_term(tiny_llama, random_tokens):
    model, tokens = tiny_llama, random_tokens(2, 10)
    sae = _sae("relu")
    with model.saes([sae], use_error_term=True):
        _, clean = model.run_with_cache(tokens)
        feature = int(clean[f"{HOOK}.hook_sae_acts_post"].sum((0, 1)).argmax())
        with ablate_features(model, sae, [feature]):
            _, ablated = model.run_with_cache(tokens)
    torch.testing.assert_close(ablated[f"{HOOK}.hook_sae_error"], clean[f"{HOOK}.hook_sae_error"])
    assert (ablated[f"{HOOK}.hook_sae_acts_post"][..., feature] == 0).all()
    expected = clean[HOOK] - clean[f"{HOOK}.hook_sae_acts_post"][..., feature, None] * sae.W_dec[feature]
    torch.testing.assert_close(ablated[HOOK], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_splices_from_mlp_input_to_output(tiny_llama, random_tokens, skip):
    model, tokens = tiny_llama, random_tokens(2, 9)
    tc = _sae("relu", hook="blocks.0.hook_mlp_in", hook_name_out="blocks.0.hook_mlp_out", skip=skip)
    if skip:  # the skip connection's term is part of the spliced output
        with torch.no_grad():
            tc.W_skip.copy_(torch.randn(tc.W_skip.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    clean = model(tokens)
    with model.saes([tc], use_error_term=True):
        torch.testing.assert_close(model(tokens), clean, atol=1e-3, rtol=0)
    captured = {}
    expected = model.run_with_hooks(
        tokens,
        fwd_hooks=[
            ("blocks.0.hook_mlp_in", lambda x, hook: captured.update(x=x)),
            ("blocks.0.hook_mlp_out", lambda y, hook: tc(captured["x"])),
        ],
    )
    with model.saes([tc]):
        torch.testing.assert_close(model(tokens), expected, atol=1e-4, rtol=1e-4)


def test_patch_sweep_over_latents_equals_a_literal_loop(tiny_llama, random_tokens):
    model = tiny_llama
    clean, corrupt = random_tokens(2, 8, seed=1), random_tokens(2, 8, seed=2)
    corrupt[:, :3] = clean[:, :3]
    sae = _sae("relu")
    metric = LogitDifference.last_position(
        torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8], reduce="none"
    )
    spec = SweepSpec(
        kind="sae_resid_pre", layers=(1,), per_position=False, per_feature=True, features=(0, 3, 17, 40)
    )
    name = f"{HOOK}.hook_sae_acts_post"
    with model.saes([sae], use_error_term=True):
        result = patch_sweep(model, clean, corrupt, spec, metric, progress=False)
        estimate = attribution_patch(model, clean, corrupt, metric, spec)
        _, clean_cache = model.run_with_cache(clean, names_filter=[name])
        expected = []
        for feature in spec.features:

            def patch(acts, hook, feature=feature):
                acts = acts.clone()
                acts[..., feature] = clean_cache[name][..., feature]
                return acts

            logits = model.run_with_hooks(corrupt, fwd_hooks=[(name, patch)])
            expected.append(metric(logits))
        # AtP, literally: (clean - corrupt) * d metric / d acts, summed over positions
        grads = {}

        def keep(acts, hook):
            acts.retain_grad()
            grads["acts"] = acts
            return acts

        with torch.enable_grad():
            metric(model.run_with_hooks(corrupt, fwd_hooks=[(name, keep)])).sum().backward()
        acts = grads["acts"]
        delta = (clean_cache[name] - acts.detach()) * acts.grad
    assert result.axes == ("layer", "feature") and result.labels["feature"] == ["F0", "F3", "F17", "F40"]
    torch.testing.assert_close(result.values[0], torch.stack(expected).float(), atol=1e-4, rtol=1e-4)
    literal = delta.sum(1)[:, list(spec.features)].T + estimate.base
    torch.testing.assert_close(estimate.values[0], literal.float(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="no SAE is spliced"):
        patch_sweep(model, clean, corrupt, spec, metric, progress=False)


def test_feature_dla_sums_to_the_logit_difference(tiny_llama, random_tokens):
    """An SAE on the final residual stream: features + b_dec + error + constants = the logit difference."""
    model, tokens = tiny_llama, random_tokens(3, 9)
    hook = "blocks.1.hook_resid_post"
    sae = _sae("relu", hook=hook)
    correct, incorrect = torch.tensor([4, 5, 6]), torch.tensor([9, 10, 11])
    dla = feature_dla(model, sae, tokens, correct=correct, incorrect=incorrect)
    with model.saes([sae], use_error_term=True):
        logits, cache = model.run_with_cache(tokens)
    rows = torch.arange(3)
    diff = logits[rows, -1, correct] - logits[rows, -1, incorrect]
    reader = model.ln_final.w[:, None] * model.W_U
    direction = (reader[:, correct] - reader[:, incorrect]).T / cache["ln_final.hook_scale"][:, -1]
    rest = ((sae.b_dec + cache[f"{hook}.hook_sae_error"][:, -1]) * direction).sum(-1)
    constant = model.b_U[correct] - model.b_U[incorrect]
    torch.testing.assert_close(dla.sum(-1) + rest + constant, diff, atol=1e-4, rtol=1e-4)
    effects = feature_logit_effects(model, sae, [2])
    torch.testing.assert_close(effects[0], sae.W_dec[2] @ reader, atol=1e-5, rtol=1e-5)


def test_top_features_and_steering(tiny_llama, random_tokens):
    model, tokens = tiny_llama, random_tokens(2, 7)
    sae = _sae("relu")
    top = top_features(model, sae, tokens, k=3)
    with model.saes([sae], use_error_term=True):
        _, cache = model.run_with_cache(tokens)
    last = cache[f"{HOOK}.hook_sae_acts_post"][:, -1]
    torch.testing.assert_close(top.values, last.topk(3).values)
    expected = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda x, hook: x + 4.0 * sae.W_dec[5])])
    with steer(model, sae, feature=5, alpha=4.0):
        torch.testing.assert_close(model(tokens), expected)
