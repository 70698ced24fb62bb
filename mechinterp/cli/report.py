"""``report.html``: one self-contained offline page with every step's summary, tables and
interactive figures, rebuilt from the run folder alone (``mechinterp report RUN_DIR``).

plotly.js is embedded once in the page's head; each figure is read from the step folder's
``*.plotly.json`` and inserted as a ``<div>`` with a fixed id, so the same run folder always
gives the same page. Steps without ``done.json`` are listed as not
finished.

Example:
    >>> write_report(Path("runs/ioi_smollm2"))       # -> runs/ioi_smollm2/report.html
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import plotly.io as pio
import yaml
from plotly.offline import get_plotlyjs

from mechinterp.cli.files import atomic_write_text, step_dir_name
from mechinterp.cli.steps.output import shown

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
.muted { color: #777; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
"""


def html_table(columns: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if v is None else shown(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def step_section(folder: Path, index: int, label: str, kind: str) -> tuple[str, list]:
    """The HTML of one step and its row in the summary table."""
    done = _read_json(folder / "done.json")
    title = f"<h2>{index + 1}. {html.escape(label)} <span class='muted'>({html.escape(kind)})</span></h2>"
    if done is None:
        return f"<section>{title}<p class='muted'>not finished</p></section>", [
            label,
            kind,
            "not finished",
            "",
            "",
        ]
    numbers = ", ".join(f"{k}: {shown(v)}" for k, v in done["summary"].items())
    parts = [title, f"<p>{html.escape(numbers)} <span class='muted'>({done['seconds']:.1f} s)</span></p>"]
    for spec in _read_json(folder / "tables.json") or []:
        parts.append(f"<h3>{html.escape(spec['title'])}</h3>" + html_table(spec["columns"], spec["rows"]))
    for name in done["figures"]:
        figure = pio.from_json((folder / f"{name}.plotly.json").read_text())
        parts.append(
            figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"step{index + 1}-{name}")
        )
    return f"<section>{''.join(parts)}</section>", [
        label,
        kind,
        "finished",
        f"{done['seconds']:.1f}",
        numbers,
    ]


def write_report(run_dir: Path) -> Path:
    """Build ``run_dir/report.html`` from the run folder.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder (no ``resolved_config.yaml``).
    """
    config_path = run_dir / "resolved_config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no resolved_config.yaml")
    config = yaml.safe_load(config_path.read_text())
    sections, rows = [], []
    for index, step in enumerate(config["steps"]):
        label = step.get("name") or step["kind"]
        section, row = step_section(
            run_dir / "steps" / step_dir_name(index, label), index, label, step["kind"]
        )
        sections.append(section)
        rows.append(row)
    name = config.get("name") or run_dir.name
    head = [
        f"<h1>mechinterp run: {html.escape(name)}</h1>",
        f"<p>model <b>{html.escape(config['model']['name'])}</b>, metric {html.escape(config['metric'])}</p>",
        "<h2>Summary</h2>",
        html_table(["step", "kind", "status", "seconds", "key numbers"], rows),
    ]
    environment = _read_json(run_dir / "environment.json")
    if environment:
        head.append(html_table(["environment", "value"], [[k, v] for k, v in environment.items()]))
    dataset = _read_json(run_dir / "dataset.json")
    if dataset:
        shown = dataset["pairs"][:5]
        head.append(f"<h3>dataset: {dataset['n']} prompt pairs (first {len(shown)})</h3>")
        head.append(html_table(list(shown[0]), [list(p.values()) for p in shown]))
    head.append(
        f"<details><summary>resolved config</summary><pre>{html.escape(config_path.read_text())}</pre></details>"
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(name)}: mechinterp report</title><style>{STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        + "".join(head)
        + "".join(sections)
        + "</body></html>"
    )
    return atomic_write_text(run_dir / "report.html", page)
