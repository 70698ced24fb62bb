"""Run folders: execute a config's steps in order, resumably, with atomic step outputs.

Layout of a run folder::

    RUN_DIR/resolved_config.yaml     the validated config with every default filled in
    RUN_DIR/environment.json         versions, device, dtype, platform
    RUN_DIR/dataset.json             the prompt pairs used (a few shown in the report)
    RUN_DIR/plotly.min.js            shared by the step figures' HTML files (offline)
    RUN_DIR/steps/NN_name/           one folder per step: results, figures, tables.json,
                                     done.json (written last)
    RUN_DIR/report.html              every step's figures and tables on one offline page
    RUN_DIR/shards/name/             with --ray: finished shards of a step still running

A step runs in a hidden staging folder next to its final place; ``done.json`` is written
there last and the folder is then renamed into place, so a killed run never leaves a step
folder that looks finished. On a re-run, a step whose ``done.json`` records the same
settings (the step's config plus model, dataset and metric) is skipped; once one step runs,
every later step runs too (later steps may read earlier outputs). The model is loaded only
when a step has to run.

Example:
    >>> rows = run_config(load_config("configs/ioi_smollm2.yaml"), Path("runs/ioi_smollm2"))
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import plotly.io as pio
import torch
import yaml
from plotly.offline import get_plotlyjs
from rich.console import Console

import mechinterp
from mechinterp.cli.files import atomic_write_text, step_dir_name
from mechinterp.cli.report import write_report
from mechinterp.cli.schema import InductionDataset, IOIDataset, RunConfig
from mechinterp.cli.steps import STEPS, StepOutput
from mechinterp.data import PromptPairs, induction_pairs, ioi_pairs, load_pairs
from mechinterp.metrics import LogitDifference, ProbabilityDifference
from mechinterp.models.tokenization import token_labels


@dataclass
class SummaryRow:
    """One line of the end-of-run table."""

    index: int
    label: str
    kind: str
    status: str  # ran | skipped | failed | not run
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def fingerprint(config: RunConfig, index: int) -> dict:
    """What a step's outputs depend on: its own settings and the model, data and metric."""
    return {
        "step": config.steps[index].model_dump(mode="json"),
        "model": config.model.model_dump(mode="json"),
        "dataset": config.dataset.model_dump(mode="json") if config.dataset else None,
        "metric": config.metric,
    }


def is_finished(folder: Path, expected: dict) -> bool:
    """Whether ``folder`` holds a finished step run with the ``expected`` fingerprint."""
    marker = folder / "done.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == expected
    except json.JSONDecodeError:
        return False


class RunContext:
    """What steps share: the model and prompt pairs (loaded on first use), the metric, and
    the folders of earlier steps."""

    def __init__(self, config: RunConfig, run_dir: Path, console: Console, ray: dict | None = None):
        self.config, self.run_dir, self.console = config, run_dir, console
        self.step_dirs: dict[str, Path] = {}
        self.ray = ray
        self._executor = None

    @property
    def executor(self):
        """The ``RayExecutor`` sweeps shard their pairs over (``--ray``), else ``None``;
        started on first use, stopped by ``close``."""
        if self.ray is None:
            return None
        if self._executor is None:
            from mechinterp.distributed import ModelSpec, RayExecutor

            model = self.config.model
            device = None if model.device == "auto" else model.device
            spec = ModelSpec(source=model.name, options={"dtype": model.dtype, "device": device})
            self._executor = RayExecutor(spec, **self.ray)
            self._executor.start()
            import ray

            where = ray.get_runtime_context().gcs_address
            self.console.print(f"using Ray: cluster {where}, {self.ray['num_workers']} workers")
            _ = self.model  # loaded here first: environment.json exists
            info = json.loads((self.run_dir / "environment.json").read_text())
            info["ray"] = {"version": ray.__version__, "cluster": where, **self.ray}
            atomic_write_text(self.run_dir / "environment.json", json.dumps(info, indent=1))
        return self._executor

    def shard_folder(self, label: str) -> Path:
        """Where step ``label`` keeps finished shards until it is done (with ``--ray``)."""
        return self.run_dir / "shards" / label

    def sweep_executor(self, label: str):
        """The executor step ``label``'s sweeps take: ``None`` without ``--ray``; else the
        Ray executor with finished shards kept in ``shard_folder(label)``, so a killed run
        resumes without redoing them."""
        if self.ray is None:
            return None
        from mechinterp.distributed import Checkpointed

        return Checkpointed(self.executor, self.shard_folder(label))

    def close(self) -> None:
        """Stop the Ray workers, if any were started."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    @cached_property
    def model(self):
        started = time.perf_counter()
        device = None if self.config.model.device == "auto" else self.config.model.device
        model = mechinterp.load_model(self.config.model.name, dtype=self.config.model.dtype, device=device)
        self.console.print(f"loaded {self.config.model.name} in {time.perf_counter() - started:.1f}s")
        write_environment(self.run_dir, model)
        return model

    @cached_property
    def pairs(self) -> PromptPairs:
        dataset = self.config.dataset
        if dataset is None:
            raise ValueError("this step needs prompt pairs; add a top-level 'dataset' to the config")
        if isinstance(dataset, IOIDataset):
            pairs = ioi_pairs(self.model, dataset.n, seed=dataset.seed)
        elif isinstance(dataset, InductionDataset):
            pairs = induction_pairs(
                self.model, dataset.n, seed=dataset.seed, n_pos=dataset.n_pos, block_len=dataset.block_len
            )
        else:
            pairs = load_pairs(dataset.path, self.model)
            pairs = pairs.select(dataset.n) if dataset.n else pairs
        write_dataset(self.run_dir, self.model, pairs)
        return pairs

    @property
    def metric(self) -> LogitDifference:
        pairs = self.pairs
        if self.config.metric == "prob_diff":
            return ProbabilityDifference(pairs.positions, pairs.correct, pairs.incorrect)
        return pairs.metric()

    def step_dir(self, label: str) -> Path:
        """The finished folder of the earlier step ``label``."""
        return self.step_dirs[label]


def write_environment(run_dir: Path, model) -> None:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformer_lens": importlib.metadata.version("transformer-lens"),  # the module has no __version__
        "mechinterp": mechinterp.__version__,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "model": model.architecture.model_name,
        "cpu_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else None,
    }
    atomic_write_text(run_dir / "environment.json", json.dumps(info, indent=1))


def write_dataset(run_dir: Path, model, pairs: PromptPairs) -> None:
    """The pairs as text (for the report and for reading what was run)."""

    def text(tokens) -> str:
        try:
            return model.to_string(tokens)
        except ValueError:  # a model without a tokenizer: token ids
            return " ".join(token_labels(None, tokens.reshape(-1).tolist()))

    def prompt(tokens, i: int) -> str:
        return text(tokens[i] if pairs.attention_mask is None else tokens[i][pairs.attention_mask[i].bool()])

    records = [
        {
            "clean": prompt(pairs.clean, i),
            "corrupt": prompt(pairs.corrupt, i),
            "correct": text(pairs.correct[i]),
            "incorrect": text(pairs.incorrect[i]),
        }
        for i in range(len(pairs))
    ]
    atomic_write_text(run_dir / "dataset.json", json.dumps({"n": len(pairs), "pairs": records}, indent=1))


def save_outputs(folder: Path, output: StepOutput) -> list[str]:
    """Figures (plotly JSON + HTML using the run's shared plotly.js) and tables."""
    names = []
    for name, figure in output.figures.items():
        (folder / f"{name}.plotly.json").write_text(pio.to_json(figure))
        figure.write_html(folder / f"{name}.html", include_plotlyjs="../../plotly.min.js")
        names.append(name)
    (folder / "tables.json").write_text(json.dumps(output.tables, indent=1, default=str))
    return names


def execute_step(context: RunContext, index: int, final: Path) -> SummaryRow:
    """Run step ``index`` into a staging folder and rename it to ``final``."""
    step = context.config.steps[index]
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    staging.chmod(0o755)  # mkdtemp creates an owner-only folder
    started = time.perf_counter()
    try:
        output = STEPS[step.kind](step, context, staging)
        figures = save_outputs(staging, output)
        seconds = time.perf_counter() - started
        done = {
            "label": step.label,
            "kind": step.kind,
            "fingerprint": fingerprint(context.config, index),
            "summary": output.summary,
            "figures": figures,
            "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (staging / "done.json").write_text(json.dumps(done, indent=1, default=str))
        if final.exists():
            retired = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(retired)
            shutil.rmtree(retired)
        staging.rename(final)
        shards = context.shard_folder(step.label)
        shutil.rmtree(shards, ignore_errors=True)  # the step is done
        if shards.parent.is_dir() and not any(shards.parent.iterdir()):
            shards.parent.rmdir()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SummaryRow(index, step.label, step.kind, "ran", seconds, output.summary)


def _remove_stale(steps_dir: Path, keep: set[str]) -> None:
    """Step folders of other configs and staging folders of interrupted runs."""
    for entry in steps_dir.iterdir():
        if entry.is_dir() and entry.name not in keep:
            shutil.rmtree(entry)


def run_config(
    config: RunConfig, run_dir: Path, console: Console | None = None, *, ray: dict | None = None
) -> list[SummaryRow]:
    """Run (or resume) ``config`` in ``run_dir``; returns one summary row per step.

    A failing step is reported in its row (status ``failed``, the error message); the steps
    after it are ``not run``. ``report.html`` is written either way. ``ray``: ``RayExecutor``
    keywords (``address``, ``num_workers``, ...) to shard patching sweeps over Ray workers.
    """
    console = console or Console()
    steps_dir = run_dir / "steps"
    steps_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "plotly.min.js").is_file():
        atomic_write_text(run_dir / "plotly.min.js", get_plotlyjs())
    atomic_write_text(
        run_dir / "resolved_config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    folders = [steps_dir / step_dir_name(i, step.label) for i, step in enumerate(config.steps)]
    _remove_stale(steps_dir, {folder.name for folder in folders})
    context = RunContext(config, run_dir, console, ray)
    try:
        rows = _run_steps(config, context, folders, console)
    finally:
        context.close()
    write_report(run_dir)
    return rows


def _run_steps(
    config: RunConfig, context: RunContext, folders: list[Path], console: Console
) -> list[SummaryRow]:
    rows: list[SummaryRow] = []
    resuming = True
    for index, (step, folder) in enumerate(zip(config.steps, folders, strict=True)):
        heading = f"[{index + 1}/{len(config.steps)}] {step.kind} {step.label!r}"
        if rows and rows[-1].status in ("failed", "not run"):
            rows.append(SummaryRow(index, step.label, step.kind, "not run"))
            continue
        resuming = resuming and is_finished(folder, fingerprint(config, index))
        if resuming:
            done = json.loads((folder / "done.json").read_text())
            console.print(f"{heading}: finished earlier, skipped")
            rows.append(SummaryRow(index, step.label, step.kind, "skipped", done["seconds"], done["summary"]))
        else:
            console.print(f"{heading} ...")
            try:
                rows.append(execute_step(context, index, folder))
            except Exception as error:  # reported in the summary; the CLI exits non-zero
                message = f"{type(error).__name__}: {error}"
                console.print(f"[red]{heading} failed: {message}[/red]")
                rows.append(SummaryRow(index, step.label, step.kind, "failed", error=message))
        context.step_dirs[step.label] = folder
    return rows
