"""SAELens 6.54 folders, both directions, against files SAELens itself wrote.

``tests/data/saelens/`` holds folders written by SAELens 6.54 (``make_files.py``, run in an
environment of its own; see the README there) with SAELens's own ``encode``/``decode``/
``forward`` outputs on fixed inputs. We load each and compare to 1e-5, and what we write
with ``save(format="saelens")`` must carry the config SAELens writes for the same SAE.
(The other direction, SAELens loading our folders, is ``check_ours.py`` in that folder.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mechinterp.sae import SAE, SAEConfig, load_sae

DATA = Path(__file__).parent / "data" / "saelens"
FOLDERS = sorted(p.name for p in DATA.iterdir() if (p / "cfg.json").is_file())
TOL = {"atol": 1e-5, "rtol": 1e-5}


def test_every_saelens_architecture_is_in_the_data():
    assert set(FOLDERS) >= {
        "standard",
        "jumprelu",
        "topk",
        "gated",
        "transcoder",
        "jumprelu_transcoder",
        "skip_transcoder",
        "topk_trained",
    }


@pytest.mark.parametrize("name", FOLDERS)
def test_saelens_folder_matches_saelens(name):
    sae = load_sae(DATA / name)
    expected = load_file(str(DATA / name / "expected.safetensors"))
    x = expected["x"]
    torch.testing.assert_close(sae.encode(x), expected["acts"], **TOL)
    torch.testing.assert_close(sae.decode(expected["acts"]), expected["recons"], **TOL)
    torch.testing.assert_close(sae(x), expected["out"], **TOL)
    assert (expected["acts"] > 0).any() and ((expected["acts"] > 0).sum(-1) < sae.cfg.d_sae).all()


def test_transcoders_read_their_hooks_and_skip_connection():
    tc = load_sae(DATA / "skip_transcoder")
    assert tc.cfg.is_transcoder and tc.cfg.skip
    assert (tc.cfg.hook_name, tc.cfg.hook_name_out, tc.cfg.width_out) == (
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_mlp_out",
        12,
    )
    assert load_sae(DATA / "jumprelu_transcoder").cfg.architecture == "jumprelu"


def test_trainer_topk_with_decoder_norm_rescaling_is_folded():
    cfg = json.loads((DATA / "topk_trained" / "cfg.json").read_text())
    assert cfg["rescale_acts_by_decoder_norm"] is True
    sae = load_sae(DATA / "topk_trained")
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), **TOL)


def test_decoder_norm_rescaling_is_folded_exactly(tmp_path):
    """Non-unit norms (a folder saved mid-training) against a literal SAELens TopK with
    ``rescale_acts_by_decoder_norm``: top-k of ``pre * n``, decoded as ``(acts / n) @ W_dec``."""
    plain = load_sae(DATA / "topk")
    folder = tmp_path / "scaled"
    plain.save(folder, format="saelens")
    w = load_file(str(folder / "sae_weights.safetensors"))
    w["W_dec"] = w["W_dec"] * torch.linspace(0.5, 2.0, plain.cfg.d_sae)[:, None]
    save_file(w, str(folder / "sae_weights.safetensors"))
    cfg = json.loads((folder / "cfg.json").read_text()) | {"rescale_acts_by_decoder_norm": True}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    x = torch.randn(6, plain.cfg.d_in)
    n = w["W_dec"].norm(dim=-1)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * n
    top = pre.topk(plain.cfg.k, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    folded = load_sae(folder)
    torch.testing.assert_close(folded.encode(x), acts, **TOL)
    torch.testing.assert_close(folded(x), (acts / n) @ w["W_dec"] + w["b_dec"], **TOL)
    torch.testing.assert_close(folded.W_dec.norm(dim=-1), torch.ones(plain.cfg.d_sae), **TOL)


def test_jumprelu_negative_thresholds_follow_the_files_convention(tmp_path):
    saelens = load_sae(DATA / "jumprelu")
    assert saelens.cfg.threshold_relu and bool((saelens.threshold < 0).any())
    x = load_file(str(DATA / "jumprelu" / "expected.safetensors"))["x"]
    pre = saelens.hidden_pre(x)
    between = (pre > saelens.threshold) & (pre < 0)
    assert between.any()  # the data separate the two conventions
    paper = saelens.with_config(threshold_relu=False)
    assert (saelens.encode(x)[between] == 0).all() and (paper.encode(x)[between] < 0).all()
    # Gemma Scope's params.npz: the paper's pre * (pre > threshold), negative outputs kept
    w = {k: v.detach().numpy() for k, v in saelens.named_parameters()}
    np.savez(tmp_path / "params.npz", **w)
    gemma = load_sae(tmp_path / "params.npz", hook_name="blocks.0.hook_resid_post")
    assert not gemma.cfg.threshold_relu
    expected = (x @ saelens.W_enc + saelens.b_enc) * ((x @ saelens.W_enc + saelens.b_enc) > saelens.threshold)
    torch.testing.assert_close(gemma.encode(x), expected, **TOL)


SAELENS_ONLY = {"sae_lens_version", "sae_lens_training_version", "training_architecture"}
SAELENS_ONLY |= {"training_architecture_details"}


@pytest.mark.parametrize("name", FOLDERS)
def test_our_saelens_files_carry_saelens_config(tmp_path, name):
    sae = load_sae(DATA / name)
    sae.save(tmp_path / name, format="saelens")
    ours = json.loads((tmp_path / name / "cfg.json").read_text())
    theirs = json.loads((DATA / ("topk" if name == "topk_trained" else name) / "cfg.json").read_text())
    theirs_meta = {k: v for k, v in theirs.pop("metadata").items() if k not in SAELENS_ONLY}
    assert ours.pop("metadata") == theirs_meta
    assert ours == theirs
    assert set(load_file(str(tmp_path / name / "sae_weights.safetensors"))) == set(
        load_file(str(DATA / name / "sae_weights.safetensors"))
    )
    back = load_sae(tmp_path / name)
    expected = load_file(str(DATA / name / "expected.safetensors"))
    torch.testing.assert_close(back(expected["x"]), expected["out"], **TOL)


def test_what_saelens_cannot_represent_is_refused(tmp_path):
    topk_tc = SAE.create(
        SAEConfig(architecture="topk", k=2, d_in=8, d_sae=16, hook_name="a", hook_name_out="b")
    )
    with pytest.raises(ValueError, match="SAELens has no topk transcoder"):
        topk_tc.save(tmp_path / "a", format="saelens")
    paper = load_sae(DATA / "jumprelu").with_config(threshold_relu=False)
    with pytest.raises(ValueError, match="negative thresholds"):
        paper.save(tmp_path / "b", format="saelens")


def test_nothing_of_ours_imports_sae_lens():
    root = Path(__file__).parent.parent
    offenders = [
        str(p.relative_to(root))
        for folder in ("mechinterp", "circuits", "tests")
        for p in (root / folder).rglob("*.py")
        if "data/saelens" not in p.as_posix()
        and any(
            line.lstrip().startswith(("import sae_lens", "from sae_lens"))
            for line in p.read_text().splitlines()
        )
    ]
    assert not offenders


def test_splice_hook_points_have_saelens_names_and_values():
    """The names and values HookedSAETransformer's wrapper gives (recorded by make_files.py)
    on the same SAE and input, spliced with the error term into a one-hook module."""
    from transformer_lens import HookedRootModule
    from transformer_lens.hook_points import HookPoint

    from mechinterp.sae.splice import POINTS, SAESplice

    class OneHook(HookedRootModule):
        device = torch.device("cpu")

        def __init__(self, width: int):
            super().__init__()
            self.width = width
            self.hook_x = HookPoint()
            self.setup()

        def check_hook_name(self, name: str) -> None:
            assert name in self.hook_dict

        def forward(self, x):
            if not x.is_floating_point():  # the splice reads the activation's width from token ids
                x = torch.zeros(*x.shape, self.width)
            return self.hook_x(x)

    assert sorted(POINTS) == json.loads((DATA / "splice_hooks.json").read_text())
    theirs = load_file(str(DATA / "standard" / "splice_values.safetensors"))
    sae = load_sae(DATA / "standard", hook_name="hook_x")
    module = OneHook(sae.cfg.d_in)
    with SAESplice(module, sae, True):
        module.setup()
        _, cache = module.run_with_cache(theirs["hook_sae_input"])
    for name in POINTS:
        torch.testing.assert_close(cache[f"hook_x.{name}"], theirs[name], **TOL)
    torch.testing.assert_close(cache["hook_x"], theirs["hook_sae_output"], **TOL)


def test_bad_files_name_themselves(tmp_path):
    import shutil

    folder = tmp_path / "truncated"
    shutil.copytree(DATA / "standard", folder)
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(
        ValueError, match=r"sae_weights.safetensors is not a readable safetensors file.*truncated"
    ):
        load_sae(folder)
    broken = tmp_path / "json"
    shutil.copytree(DATA / "standard", broken)
    (broken / "cfg.json").write_text('{"d_in": 16, "d_sae": ')
    with pytest.raises(ValueError, match=r"cfg.json is not valid JSON \(Expecting value at line 1"):
        load_sae(broken)
    np.savez(tmp_path / "obj.npz", W_enc=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match=r"obj.npz: array 'W_enc' holds Python objects"):
        load_sae(tmp_path / "obj.npz", hook_name="x")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "obj.npz").read_bytes()[:40])
    with pytest.raises(ValueError, match=r"cut.npz is not a readable .npz archive"):
        load_sae(tmp_path / "cut.npz", hook_name="x")
    mine = tmp_path / "mine"
    load_sae(DATA / "gated").save(mine)
    (mine / "sae.json").write_text("not json")
    with pytest.raises(ValueError, match=r"sae.json is not valid JSON"):
        load_sae(mine)


def test_non_finite_weights_are_refused_by_name(tmp_path):
    import shutil

    folder = tmp_path / "nan"
    shutil.copytree(DATA / "jumprelu", folder)
    w = load_file(str(folder / "sae_weights.safetensors"))
    w["threshold"][3] = float("nan")
    w["W_dec"][0, 0] = float("inf")
    save_file(w, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"W_dec holds 1 non-finite value\(s\) \(inf\)"):
        load_sae(folder)
    w["W_dec"][0, 0] = 0.0
    save_file(w, str(folder / "sae_weights.safetensors"))
    with pytest.raises(
        ValueError, match=r"sae_weights.safetensors: threshold holds 1 non-finite value\(s\) \(NaN\)"
    ):
        load_sae(folder)
