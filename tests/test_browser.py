"""The HTML we hand to people opens in a real browser: a run's ``report.html`` and an exported
circuit page render every plotly figure in headless Chromium without console or page errors.

Uses the system Chromium (Debian ``chromium``, installed by ``.ci/run``) through playwright;
skipped only where ``/usr/bin/chromium`` is missing.
"""

from __future__ import annotations

import json

import pytest
from browser import render_page, skip_without_chromium
from typer.testing import CliRunner

import circuits
from mechinterp.cli.app import app
from mechinterp.data import induction_pairs
from mechinterp.plotting import write_circuit_html

pytest.importorskip("playwright")

# a small run on the toy induction model: patching maps, a circuit and its faithfulness curve
CONFIG = """\
name: browser_check
model: {name: toy-induction-2l}
dataset: {kind: induction, n: 4, seed: 0}
metric: logit_diff
steps:
  - {kind: patching, name: resid_pre, site: resid_pre}
  - {kind: patching, name: heads, site: z, per_position: false}
  - {kind: circuit, name: circuit, algorithm: eap, top_n: 10, faithfulness_points: 3}
  - {kind: export, name: export, circuit: circuit, formats: [json, html]}
"""


def test_report_renders_every_figure(tmp_path):
    skip_without_chromium()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    report = run_dir / "report.html"
    figures = sum(
        len(json.loads(done.read_text())["figures"]) for done in (run_dir / "steps").glob("*/done.json")
    )
    assert figures >= 3  # two patching heatmaps and the circuit step's figures
    assert report.read_text().count('class="plotly-graph-div"') == figures

    rendered = render_page(report)
    assert rendered.console_errors == []
    assert rendered.page_errors == []
    assert rendered.plot_count == figures

    exported = render_page(run_dir / "steps" / "04_export" / "circuit.html")
    assert exported.console_errors == [] and exported.page_errors == []
    assert exported.plot_count == 1


def test_exported_circuit_html_renders(induction_model, tmp_path):
    skip_without_chromium()
    pairs = induction_pairs(induction_model, 8, seed=0)
    graph = circuits.Graph.from_model(induction_model)
    circuit = circuits.ALGORITHMS["eap"](
        induction_model, pairs, pairs.metric(), graph, config=circuits.EAPConfig(top_n=20)
    )
    assert circuit.n_edges > 0
    path = write_circuit_html(circuit, tmp_path / "circuit.html")

    rendered = render_page(path)
    assert rendered.console_errors == []
    assert rendered.page_errors == []
    assert rendered.plot_count >= 1
