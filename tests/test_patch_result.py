"""PatchResult: labels, normalisation, dataframe, files, figure."""

from __future__ import annotations

import json

import pytest
import torch

from mechinterp.metrics import LogitDifference
from mechinterp.patching import PatchResult, SweepSpec, patch_sweep
from mechinterp.plotting import patch_heatmap


@pytest.fixture(scope="module")
def result(tiny_llama):
    clean, corrupt = ["abcdef", "uvwxyz"], ["abQdef", "uvwQyz"]
    _, mask = tiny_llama.encode(clean)
    metric = LogitDifference.from_answers(
        tiny_llama, mask, correct=["a", "b"], incorrect=["c", "d"], reduce="none"
    )
    return patch_sweep(tiny_llama, clean, corrupt, SweepSpec(kind="z"), metric, progress=False)


def test_axes_labels_and_baselines(result):
    assert result.axes == ("layer", "pos", "head")
    assert result.values.shape == (2, 7, 4, 2)
    assert result.labels["layer"] == ["L0", "L1"]
    assert result.labels["pos"][:3] == ["0: <bos>", "1: a", "2: b"]
    assert result.labels["head"] == ["H0", "H1", "H2", "H3"]
    assert result.base.shape == result.source.shape == (2,)
    normalized = result.normalized()
    assert normalized.shape == (2, 7, 4)
    # positions before the first differing token cannot change anything: exactly the base run
    assert torch.equal(normalized[:, :3], torch.zeros(2, 3, 4))


def test_dataframe(result):
    frame = result.to_dataframe()
    assert len(frame) == 2 * 7 * 4 * 2
    assert list(frame.columns) == [
        "layer",
        "layer_label",
        "pos",
        "pos_label",
        "head",
        "head_label",
        "example",
        "value",
    ]
    row = frame[(frame["layer"] == 1) & (frame["pos"] == 6) & (frame["head"] == 2) & (frame["example"] == 1)]
    assert row.value.item() == pytest.approx(result.values[1, 6, 2, 1].item())


def test_save_and_load_round_trip(result, tmp_path):
    tensors, meta = result.save(tmp_path / "sweep")
    assert tensors.name == "sweep.safetensors" and meta.name == "sweep.json"
    assert json.loads(meta.read_text())["axes"] == ["layer", "pos", "head"]
    loaded = PatchResult.load(tmp_path / "sweep")
    assert torch.equal(loaded.values, result.values)
    assert torch.equal(loaded.base, result.base) and torch.equal(loaded.source, result.source)
    assert loaded.labels == result.labels and loaded.metadata == result.metadata


def test_heatmap_has_token_labels_and_one_panel_per_head(result):
    figure = patch_heatmap(result)
    assert len(figure.data) == 4
    assert list(figure.data[0].x) == result.labels["pos"]
    assert list(figure.data[0].y) == ["L0", "L1"]
    assert "normalized" in figure.layout.title.text


def test_no_normalization_without_a_source_run(tiny_llama):
    clean, corrupt = ["abcdef"], ["abQdef"]
    _, mask = tiny_llama.encode(clean)
    metric = LogitDifference.from_answers(tiny_llama, mask, correct=["a"], incorrect=["c"])
    zero = patch_sweep(
        tiny_llama, clean, corrupt, SweepSpec(kind="resid_pre"), metric, ablation="zero", progress=False
    )
    with pytest.raises(ValueError, match="normalized\\(\\) needs the source run's metric"):
        zero.normalized()
    assert len(patch_heatmap(zero).data) == 1
