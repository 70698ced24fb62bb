"""The ``mechinterp`` command: config validation and overrides, run folders, resuming,
reports, models, exit codes. Every config in configs/ runs here with small settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechinterp.cli import schema
from mechinterp.cli.app import app
from mechinterp.cli.config import ConfigError, apply_override, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
runner = CliRunner()

# small settings per shipped config, so CI runs each one in seconds
SMALL = {
    "ioi_smollm2": [
        "dataset.n=2",
        "steps.0.layers=[0, 15, 29]",
        "steps.1.layers=[20, 23]",
        "steps.2.layers=[20, 23]",
        "steps.3.top_n=300",
        "steps.3.faithfulness_points=2",
        "steps.3.faithfulness_max_edges=300",
    ],
    "induction_attn_only": ["dataset.n=4", "steps.2.top_n=10"],
    "logit_lens": [
        "steps.0.prompts=['The Eiffel Tower is in', 'The opposite of hot is']",
        "steps.0.targets=null",
    ],
    "probe": [f"steps.{i}.{key}" for i in (0, 1) for key in ("n=60", "layers=[0, 6]", "max_epochs=40")],
    "token_attribution": ["dataset.n=2", "steps.0.steps=4", "steps.1.steps=4", "steps.1.n=2"],
    "explain_smollm2": [
        "steps.0.indices=[17, 123]",
        "steps.0.max_contexts=48",
        "steps.0.methods=[detection]",
        "steps.0.check_scorer=false",
    ],
    "attribution_graph_smollm2": ["steps.0.prompt='The capital of France'"],
    "sae_smollm2": [
        f"steps.0.{key}"
        for key in (
            "d_sae=256",
            "train_texts=24",
            "samples=4096",
            "batch_size=512",
            "context=32",
            "eval_texts=4",
            "dashboards=2",
        )
    ],
    "diff_smollm2": [
        *[
            f"steps.0.{key}"
            for key in ("d_sae=256", "train_texts=24", "samples=4096", "batch_size=512", "context=32")
        ],
        *[f"steps.0.{key}" for key in ("eval_texts=4", "dashboards=1")],
        *[f"steps.1.{key}" for key in ("max_texts=16", "context_len=32", "explain=0", "n_texts=4")],
    ],
}
EXPECTED_FILES = {
    "patching": ["result.safetensors", "result.json", "heatmap.html", "heatmap.plotly.json"],
    "attribution": ["result.safetensors", "result.json", "heatmap.html", "vs_exact.html"],
    "circuit": ["circuit.json", "faithfulness.json", "circuit.html", "faithfulness.html"],
    "logit_lens": ["lens_0.safetensors", "lens_0.json", "heatmap_0.html", "trajectory_0.html"],
    "probe": ["probes.safetensors", "probes.json", "accuracy.html"],
    "export": ["circuit.json"],
    "token_attribution": ["integrated_gradients.safetensors", "integrated_gradients.json", "methods_0.html"],
    "sae": ["sae/sae.json", "sae/sae.safetensors", "evaluation.json", "evaluation.html", "dashboards.html"],
    "explain": ["scores.json", "dashboard.html", "scores.html"],
    "attribution_graph": [
        "attribution_graph.json",
        "attribution_graph.html",
        "graph_folder/graph-metadata.json",
        "graph.html",
    ],
    "diff": ["diff.csv", "summary.json", "report.html", "volcano.html", "hypotheses.json"],
}


def invoke(*args: str):
    """Run a quick command in-process."""
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def run_cli(*args: str) -> tuple[int, str]:
    """Run ``mechinterp ARGS`` in a fresh process (as a user would; also outside the test
    session's runtime type checks, which make model forwards many times slower)."""
    done = subprocess.run(
        [sys.executable, "-m", "mechinterp", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    return done.returncode, done.stdout + done.stderr


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- validation -------------------------------------------------------------------------

BAD = [
    (
        "model: {name: smollm2-135m, dtyp: float32}\nsteps: [{kind: logit_lens, prompts: [a]}]",
        "model.dtyp: unknown key; allowed keys here: name, dtype, device",
    ),
    (
        "dataset: {kind: ioi, n: many}\nsteps: [{kind: patching}]",
        "dataset.n: input should be a valid integer",
    ),
    (
        "dataset: {kind: ioi}\nsteps: [{kind: patching}, {kind: circuit, algorithm: acdcx}]",
        "steps[1].algorithm: got 'acdcx', allowed: 'edge-patching', 'eap', 'eap-ig', 'acdc'",
    ),
    (
        "dataset: {kind: ioi}\nsteps: [{kind: patching, site: zz}]",
        "steps[0].site: got 'zz', allowed: 'resid_pre'",
    ),
    ("steps: [{kind: sweep}]", "steps[0].kind: got 'sweep', allowed: 'patching', 'attribution', 'circuit'"),
    ("steps: [{kind: patching}]", "steps[0] (patching) needs prompt pairs: add a top-level 'dataset'"),
    (
        "steps: [{kind: logit_lens, prompts: [a], colour: red}]",
        "steps[0].colour: unknown key; allowed keys here: name, kind, prompts",
    ),
    (
        "dataset: {kind: ioi}\nsteps: [{kind: patching}, {kind: patching}]",
        "steps[1].name: 'patching' is already the name of steps[0]",
    ),
    (
        "dataset: {kind: ioi}\nsteps: [{kind: export, circuit: c}]",
        "steps[0].circuit: 'c' is not an earlier circuit step",
    ),
    (
        "steps: [{kind: explain, unit: sae_latent, sae: s, indices: [1, 2]}]",
        "steps[0].sae: 's' is not an earlier sae step",
    ),
    (
        "steps: [{kind: explain, unit: sae_latent, indices: [1, 2]}]",
        "steps[0]: unit sae_latent needs sae: the name of an earlier sae step (and no layer)",
    ),
    (
        "steps: [{kind: explain, indices: [1, 2]}]",
        "steps[0]: unit neuron needs layer: a block index (and no sae)",
    ),
    ("steps: []", "steps: list should have at least 1 item"),
    ("- a\n- b\n", "the config must be a mapping"),
    ("steps: [{kind: logit_lens, prompts: [a], targets: [' b', ' c']}]", "targets: 2 targets for 1 prompts"),
    (
        "steps: [{kind: attribution_graph, prompt: a, transcoders: ., width: 8, k: 2}]",
        "steps[0]: k, width go with transcoders: random only",
    ),
    (
        "steps: [{kind: attribution_graph, prompt: a, activation: relu, k: 2}]",
        "steps[0]: k applies to activation: topk only",
    ),
    ("steps: [{kind: attribution_graph, prompt: a, transcoders: nowhere}]", "steps[0].transcoders: "),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_invalid_configs_name_the_key_path_and_allowed_values(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert any(message in line for line in caught.value.problems), caught.value.problems


def test_every_problem_is_reported_at_once(tmp_path):
    text = "model: {dtype: int8}\ndataset: {kind: ioi, n: 0}\nsteps: [{kind: patching, direction: up}]"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    paths = [line.split(":")[0] for line in caught.value.problems]
    assert paths == ["model.dtype", "dataset.n", "steps[0].direction"]


def test_bad_config_fails_fast_without_torch_and_with_exit_code_2(tmp_path):
    path = write(tmp_path, "dataset: {kind: ioi}\nsteps: [{kind: circuit, algorithm: acdcx}]")
    probe = "import sys; from mechinterp.cli.app import main; sys.argv = ['mechinterp', 'run', sys.argv[1]]\n"
    probe += "try:\n    main()\nexcept SystemExit as e:\n    print('torch' in sys.modules, e.code)"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    assert done.stdout.split() == ["False", "2"]  # exit 2, torch never imported
    assert "steps[0].algorithm: got 'acdcx', allowed: 'edge-patching', 'eap', 'eap-ig', 'acdc'" in done.stderr
    # the bar is 2 s; not importing torch is what keeps it there (asserted above), so the
    # wall time only catches a gross regression on a loaded machine
    assert elapsed < 10.0


def test_literals_match_the_library():
    from circuits import ALGORITHMS
    from mechinterp.cli.steps.export import FORMATS, SUFFIXES
    from mechinterp.patching.sites import SiteKind
    from mechinterp.probing import BUILT_IN

    latent_kinds = {k for k in typing.get_args(SiteKind) if k.startswith("sae_")}  # need a spliced SAE
    assert typing.get_args(schema.SiteKind) == tuple(
        k for k in typing.get_args(SiteKind) if k not in latent_kinds
    )
    assert set(typing.get_args(schema.Algorithm)) == set(ALGORITHMS)
    assert set(typing.get_args(schema.ExportFormat)) == set(FORMATS) == set(SUFFIXES)
    assert set(typing.get_args(schema.ProbeData)) == set(BUILT_IN)
    from circuits.tracing import transcoders

    assert typing.get_args(schema.TranscoderKind) == typing.get_args(transcoders.Kind)
    assert typing.get_args(schema.TranscoderActivation) == typing.get_args(transcoders.Activation)
    assert typing.get_args(schema.TranscoderInput) == typing.get_args(transcoders.InputSite)


# --- overrides --------------------------------------------------------------------------


def test_set_overrides_parse_paths_indices_and_yaml_values():
    data = {"dataset": {"kind": "ioi"}, "steps": [{"kind": "patching"}, {"kind": "circuit"}]}
    apply_override(data, "steps.1.top_n=50")
    apply_override(data, "steps[0].layers=[0, 3]")
    apply_override(data, "dataset.n=4")
    apply_override(data, "model.name=toy-induction-2l")
    assert data["steps"][1]["top_n"] == 50 and data["steps"][0]["layers"] == [0, 3]
    assert data["dataset"] == {"kind": "ioi", "n": 4} and data["model"] == {"name": "toy-induction-2l"}
    with pytest.raises(ConfigError, match="steps is a list of 2 items; use an index 0..1"):
        apply_override(data, "steps.5.top_n=1")
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        apply_override(data, "steps.1.top_n")
    with pytest.raises(ConfigError, match=r"dataset.kind is a value \('ioi'\), not a section"):
        apply_override(data, "dataset.kind.x=1")


def test_overridden_values_are_validated(tmp_path):
    path = write(tmp_path, "dataset: {kind: ioi}\nsteps: [{kind: circuit}]")
    assert load_config(path, ["steps.0.top_n=7"]).steps[0].top_n == 7
    with pytest.raises(ConfigError, match="steps\\[0\\].top_n: input should be greater than 0"):
        load_config(path, ["steps.0.top_n=-1"])


def test_records_path_is_resolved_against_the_config_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.jsonl").write_text("{}\n")
    path = write(tmp_path, "dataset: {kind: records, path: data/pairs.jsonl}\nsteps: [{kind: patching}]")
    assert load_config(path).dataset.path == str(tmp_path / "data" / "pairs.jsonl")
    with pytest.raises(ConfigError, match="dataset.path: file .*missing.jsonl does not exist"):
        load_config(path, ["dataset.path=missing.jsonl"])


# --- commands ---------------------------------------------------------------------------


def test_missing_config_file_exits_2_with_a_clear_message(tmp_path):
    result, output = invoke("run", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert f"config file {tmp_path / 'nope.yaml'} does not exist" in output


def test_help_everywhere():
    for command in ([], ["run"], ["report"], ["models"], ["models", "pull"], ["export"]):
        result, output = invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage" in output


@pytest.mark.slow
def test_models_list_shows_the_embedded_model(smollm2):
    result, output = invoke("models", "list")
    assert result.exit_code == 0
    assert "smollm2-135m" in output and "in place" in output and "toy-induction-2l" in output


def test_models_pull_rejects_unknown_names():
    result, output = invoke("models", "pull", "gpt-7")
    assert (
        result.exit_code == 2 and "unknown model 'gpt-7'; models that can be pulled: smollm2-135m" in output
    )


def test_report_on_a_folder_that_is_not_a_run(tmp_path):
    result, output = invoke("report", tmp_path)
    assert result.exit_code == 2 and "has no resolved_config.yaml" in output


# --- full runs --------------------------------------------------------------------------


def statuses(output: str) -> list[str]:
    """Step statuses in the order the runner printed them."""
    marks = {"finished earlier, skipped": "skipped", " ...": "ran"}
    found = []
    for line in output.splitlines():
        if line.startswith("["):
            found += [status for mark, status in marks.items() if line.endswith(mark)]
    return found


def test_every_shipped_config_has_small_settings():
    assert {path.stem for path in CONFIGS.glob("*.yaml")} == set(SMALL)


# Every shipped config but the attention-only one loads SmolLM2-135M in a fresh process
# (25-140 s of CPU each): end-to-end runs, outside the default run (``-m e2e`` runs them).
SHIPPED = [
    pytest.param(name, marks=[] if name == "induction_attn_only" else [pytest.mark.e2e])
    for name in sorted(SMALL)
]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_runs(tmp_path, request, name):
    if name == "ioi_smollm2":  # the module's shared run
        check_run_folder(request.getfixturevalue("ioi_run"))
        return
    code, output = run_cli(
        "run", CONFIGS / f"{name}.yaml", "--out", tmp_path, *[f"--set={s}" for s in SMALL[name]]
    )
    assert code == 0, output
    assert f"report: {(tmp_path / 'report.html').resolve()}" in output.replace("\n", "")
    check_run_folder(tmp_path)


def check_run_folder(run_dir: Path) -> None:
    environment = json.loads((run_dir / "environment.json").read_text())
    assert {"python", "torch", "transformer_lens", "mechinterp", "device", "dtype"} <= set(environment)
    assert environment["transformer_lens"].startswith("4.")  # a real version, not a placeholder
    config = load_config(run_dir / "resolved_config.yaml")
    report = (run_dir / "report.html").read_text()
    assert report.count("plotly.js v") == 1  # embedded once, inline
    assert "<script src=" not in report and 'src="http' not in report  # nothing fetched
    for index, step in enumerate(config.steps):
        folder = run_dir / "steps" / f"{index + 1:02d}_{step.label}"
        done = json.loads((folder / "done.json").read_text())
        assert done["kind"] == step.kind and done["summary"]
        if step.kind == "probe":  # selectivity next to every accuracy
            assert {"test score", "control task", "selectivity"} <= set(done["summary"])
        for file in EXPECTED_FILES[step.kind]:
            assert (folder / file).stat().st_size > 0, f"{folder / file}"
        assert f"{index + 1}. {step.label}" in report
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".pt", ".pkl", ".pickle", ".bin")]


@pytest.fixture(scope="module")
def ioi_run(tmp_path_factory):
    """A finished small IOI run (copied by each test that changes it)."""
    run_dir = tmp_path_factory.mktemp("ioi")
    code, output = run_cli(
        "run", CONFIGS / "ioi_smollm2.yaml", "--out", run_dir, *[f"--set={s}" for s in SMALL["ioi_smollm2"]]
    )
    assert code == 0, output
    return run_dir


def rerun(run_dir: Path, *extra: str):
    settings = [*SMALL["ioi_smollm2"], *extra]
    return run_cli("run", CONFIGS / "ioi_smollm2.yaml", "--out", run_dir, *[f"--set={s}" for s in settings])


@pytest.mark.slow
@pytest.mark.e2e  # on the shared IOI run folder (a SmolLM2 run in a fresh process)
def test_rerun_skips_finished_steps_and_reruns_from_a_changed_one(ioi_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(ioi_run, run_dir)
    marker = run_dir / "steps" / "01_resid_pre" / "done.json"
    before = marker.read_text()
    code, output = rerun(run_dir)
    assert code == 0 and statuses(output) == ["skipped"] * 5
    assert "loaded smollm2-135m" not in output  # nothing to run, so no model load
    assert marker.read_text() == before
    code, output = rerun(run_dir, "steps.2.top_n=5")  # the attribution step changes
    assert code == 0 and statuses(output) == ["skipped", "skipped", "ran", "ran", "ran"]


@pytest.mark.slow
@pytest.mark.e2e  # on the shared IOI run folder (a SmolLM2 run in a fresh process)
def test_half_written_step_is_rerun_and_staging_leftovers_removed(ioi_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(ioi_run, run_dir)
    (run_dir / "steps" / "05_export" / "done.json").unlink()  # killed before its marker was written
    (run_dir / "steps" / ".02_heads.partial-x1").mkdir()  # a staging folder of a killed run
    code, output = rerun(run_dir)
    assert code == 0 and statuses(output) == ["skipped"] * 4 + ["ran"]
    assert (run_dir / "steps" / "05_export" / "done.json").is_file()
    assert sorted(p.name for p in (run_dir / "steps").iterdir()) == [
        "01_resid_pre", "02_heads", "03_heads_atp", "04_circuit", "05_export"
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.e2e  # on the shared IOI run folder (a SmolLM2 run in a fresh process)
def test_failing_step_exits_1_and_names_the_step(ioi_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(ioi_run, run_dir)
    code, output = rerun(run_dir, "steps.1.layers=[99]")
    assert code == 1
    assert "step 'heads' failed: ValueError" in output and "layer 99 does not exist" in output
    assert statuses(output) == ["skipped", "ran"]
    assert "not run" in output and (run_dir / "report.html").is_file()


@pytest.mark.slow
@pytest.mark.e2e  # on the shared IOI run folder (a SmolLM2 run in a fresh process)
def test_report_is_rebuilt_from_the_run_folder(ioi_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(ioi_run, run_dir)
    original = (run_dir / "report.html").read_text()
    (run_dir / "report.html").unlink()
    result, _ = invoke("report", run_dir)
    assert result.exit_code == 0 and (run_dir / "report.html").read_text() == original


@pytest.mark.slow
@pytest.mark.e2e  # on the shared IOI run folder (a SmolLM2 run in a fresh process)
def test_export_command_converts_a_circuit_file(ioi_run, tmp_path):
    source = ioi_run / "steps" / "04_circuit" / "circuit.json"
    result, output = invoke("export", source, "--to", "dot", "--out", tmp_path / "c.dot")
    assert result.exit_code == 0, output
    dot = (tmp_path / "c.dot").read_text()
    edges = sum(edge["in_graph"] for edge in json.loads(source.read_text())["edges"])
    assert dot.startswith("digraph") and dot.count("->") == edges
    result, output = invoke("export", tmp_path / "none.json", "--to", "dot")
    assert result.exit_code == 2 and "does not exist" in output


def test_attribution_graph_step_on_a_tiny_model(tmp_path):
    from mechinterp.models.tiny import tiny_hf_model

    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
    hf_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    step = "{kind: attribution_graph, prompt: 'cab ca', width: 16, input_site: mlp_normalized, node_threshold: 0.99}"
    config = write(tmp_path, f"model: {{name: {tmp_path / 'tiny'}, device: cpu}}\nsteps: [{step}]")
    result, output = invoke("run", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, output
    check_run_folder(tmp_path / "run")
    folder = tmp_path / "run" / "steps" / "01_attribution_graph"
    data = json.loads((folder / "attribution_graph.json").read_text())
    assert data["metadata"]["slug"] == "attribution_graph" and data["metadata"]["node_threshold"] == 0.99
    assert data["links"] and all("mechinterp_heads" in link for link in data["links"])  # head_split: true
    index = json.loads((folder / "graph_folder" / "graph-metadata.json").read_text())["graphs"]
    assert [g["slug"] for g in index] == ["attribution_graph"]
    assert json.loads((folder / "graph_folder" / "attribution_graph.json").read_text()) == data
    summary = json.loads((folder / "done.json").read_text())["summary"]
    assert summary["kept nodes"] == len(data["nodes"]) and summary["kept edges"] == len(data["links"])
    assert summary["kept features"] > 0 and 0 <= summary["replacement score"] <= 1
    assert "heads: L" in (folder / "attribution_graph.html").read_text()


@pytest.mark.slow
def test_records_dataset_with_padding_runs(tmp_path):
    records = [
        {"clean": "The capital of France is", "corrupt": "The capital of Italy is", "correct": " Paris", "incorrect": " Rome"},
        {"clean": "The capital of Germany is the city of", "corrupt": "The capital of Spain is the city of", "correct": " Berlin", "incorrect": " Madrid"},
    ]  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = write(
        tmp_path, "dataset: {kind: records, path: pairs.jsonl}\nsteps: [{kind: patching, layers: [0, 20]}]"
    )
    code, output = run_cli("run", config, "--out", tmp_path / "run")
    assert code == 0, output
    dataset = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert [p["clean"] for p in dataset["pairs"]] == ["<|im_start|>" + r["clean"] for r in records]
    from mechinterp.patching import PatchResult

    patched = PatchResult.load(tmp_path / "run" / "steps" / "01_patching" / "result")
    assert patched.labels["layer"] == ["L0", "L20"] and patched.values.shape[0] == 2
    assert patched.values.shape[-1] == 2  # both examples, padded to one length


def test_config_that_is_not_utf8_exits_2_naming_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("steps: [{kind: logit_lens, prompts: ['café']}]\n".encode("latin-1"))
    result, output = invoke("run", path)
    assert result.exit_code == 2
    assert f"config file {path} is not UTF-8 text: byte 0xe9 at offset" in output.replace("\n", "")


@pytest.mark.parametrize("under", [False, True], ids=["file", "under_a_file"])
def test_out_naming_an_existing_file_exits_2(tmp_path, under):
    config = write(tmp_path, "steps: [{kind: logit_lens, prompts: [a]}]")
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    out = existing / "run" if under else existing
    result, output = invoke("run", config, "--out", out)
    assert result.exit_code == 2
    expected = f"lies under the file {existing}" if under else "is an existing file"
    assert f"--out {out} {expected}" in output.replace("\n", "")
    assert existing.read_text() == "keep me"


def test_tables_and_key_numbers_keep_four_significant_digits(tmp_path):
    import numpy as np
    import pandas as pd

    from mechinterp.cli.report import step_section
    from mechinterp.cli.steps.output import significant, table

    frame = pd.DataFrame(
        {
            "cell": ["L3 H1", "L0 H2"],
            "effect": np.array([7.2154, -3e-6], dtype=np.float32),
            "n": [1, 2],
            "normalized": [0.123456, float("nan")],
        }
    )
    assert table("top", frame)["rows"] == [["L3 H1", 7.215, 1, 0.1235], ["L0 H2", -3e-6, 2, None]]
    assert significant(float(np.float32(7.2154))) == 7.215
    # a run folder written before the rounding still prints rounded numbers
    folder = tmp_path / "01_step"
    folder.mkdir()
    (folder / "done.json").write_text(
        json.dumps({"summary": {"top effect": 7.215400218963623, "cells": 30}, "figures": [], "seconds": 1.0})
    )
    rows = [["L3 H1", 7.215400218963623]]
    (folder / "tables.json").write_text(
        json.dumps([{"title": "top", "columns": ["cell", "effect"], "rows": rows}])
    )
    section, row = step_section(folder, 0, "step", "patching")
    assert "7.2154002" not in section and "<td>7.215</td>" in section
    assert row[-1] == "top effect: 7.215, cells: 30"
