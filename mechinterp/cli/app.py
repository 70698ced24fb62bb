"""The ``mechinterp`` command (typer).

    mechinterp run CONFIG.yaml [--out DIR] [--set key.path=value ...] [--ray local|auto|ADDRESS]
    mechinterp report RUN_DIR
    mechinterp models list | mechinterp models pull NAME
    mechinterp export GRAPH.json --to json|eap-ig|graphml|dot|neuronpedia|html [--out PATH]
                      [--scan NEURONPEDIA_MODEL_ID --slug NAME]
    mechinterp tour [PROMPT]
    mechinterp serve MODEL [--host 127.0.0.1] [--port 8000] [--api-key-env NAME] [limits]

Exit codes: 0 success, 1 a step or command failed at run time, 2 bad input (config, path,
name). Configs are validated before torch is imported, so a bad config fails fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mechinterp.cli.config import ConfigError, load_config
from mechinterp.cli.schema import ExportFormat

app = typer.Typer(
    help="Mechanistic-interpretability sweeps from YAML configs, run folders and reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List the embedded models and put them in place.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` to stderr; the caller raises the returned ``Exit``."""
    errors.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def check_run_dir(run_dir: Path) -> None:
    """Exit 2 unless ``run_dir`` is a folder or can become one (no file on its path)."""
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is an existing file" if folder == run_dir else f"lies under the file {folder}"
                raise fail(f"--out {run_dir} {what}; the run folder must be a folder (new or earlier run)")
            return


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run config, e.g. configs/ioi_smollm2.yaml")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/CONFIG_NAME)")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: key.path=value (YAML value), repeatable"),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Shard patching sweeps over Ray workers: 'local' (a private cluster on 127.0.0.1), "
            "'auto' (the cluster this machine belongs to) or a cluster ADDRESS. Needs mechinterp[distributed]",
        ),
    ] = None,
    ray_workers: Annotated[
        int, typer.Option("--ray-workers", min=1, help="Ray workers (model replicas) with --ray")
    ] = 2,
    ray_gpus: Annotated[
        float, typer.Option("--ray-gpus", min=0, help="GPUs per Ray worker with --ray (1: a GPU each)")
    ] = 0,
) -> None:
    """Run (or resume) CONFIG into a run folder and write its report.html.

    Steps that finished earlier with the same settings are skipped (with or without --ray:
    the results are the same).
    """
    try:
        resolved = load_config(config, overrides or [])
    except ConfigError as error:
        raise fail(f"invalid config {config}:\n  " + "\n  ".join(error.problems)) from None
    run_dir = out or Path("runs") / config.stem
    check_run_dir(run_dir)
    from mechinterp.cli.runner import run_config  # imports torch: only after validation
    from mechinterp.cli.steps.output import shown

    ray_options = (
        None if ray is None else {"address": ray, "num_workers": ray_workers, "num_gpus_per_worker": ray_gpus}
    )
    rows = run_config(resolved, run_dir, console, ray=ray_options)
    table = Table(title=f"{resolved.name or config.stem}: {len(rows)} steps")
    for column in ("#", "step", "kind", "status", "seconds", "key numbers"):
        table.add_column(column, overflow="fold")
    colours = {"ran": "green", "skipped": "cyan", "failed": "red", "not run": "yellow"}
    for row in rows:
        numbers = row.error or ", ".join(f"{k}={shown(v)}" for k, v in row.numbers.items())
        status = f"[{colours[row.status]}]{row.status}[/]"
        table.add_row(str(row.index + 1), row.label, row.kind, status, f"{row.seconds:.1f}", numbers)
    console.print(table)
    report = (run_dir / "report.html").resolve()
    failed = [row for row in rows if row.status == "failed"]
    if failed:
        raise fail(f"step {failed[0].label!r} failed: {failed[0].error}; partial report: {report}", code=1)
    console.print(f"report: {report}", highlight=False, soft_wrap=True)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mechinterp run`")]) -> None:
    """Rebuild RUN_DIR/report.html from the run folder's files."""
    from mechinterp.cli.report import write_report

    try:
        path = write_report(run_dir)
    except FileNotFoundError as error:
        raise fail(str(error)) from None
    console.print(f"report: {path.resolve()}", highlight=False, soft_wrap=True)


@models_app.command("list")
def models_list() -> None:
    """The models that load offline by name, and whether each is in place."""
    from mechinterp.cli.models import model_status

    table = Table(title="models loadable by name (also: a hub id, a local HF folder or a .gguf file)")
    for column in ("name", "status", "description"):
        table.add_column(column, overflow="fold")
    for name, status, description in model_status():
        table.add_row(name, status, description)
    console.print(table)


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="An embedded model name, e.g. smollm2-135m")],
) -> None:
    """Put an embedded model in place (dequantise or train it into the cache) so later loads are fast."""
    from mechinterp.cli.models import UnknownModelError, pull

    try:
        location = pull(name)
    except UnknownModelError as error:
        raise fail(str(error)) from None
    except ModuleNotFoundError as error:
        raise fail(str(error), code=1) from None
    console.print(f"{name} is in place: {location}", highlight=False, soft_wrap=True)


@app.command("export")
def export_graph(
    graph: Annotated[Path, typer.Argument(help="A circuit file in our JSON format (circuit.json)")],
    to: Annotated[ExportFormat, typer.Option("--to", help="Output format")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output path (default: beside GRAPH)")
    ] = None,
    scan: Annotated[
        str | None, typer.Option(help="neuronpedia: Neuronpedia model id (default: the model name)")
    ] = None,
    slug: Annotated[
        str | None, typer.Option(help="neuronpedia: graph name (default: new per export)")
    ] = None,
) -> None:
    """Convert a circuit file (ours, e.g. RUN_DIR/steps/NN_circuit/circuit.json) to another format."""
    if not graph.is_file():
        raise fail(f"circuit file {graph} does not exist")
    if to != "neuronpedia" and (scan or slug):
        raise fail("--scan and --slug apply to --to neuronpedia only")
    import circuits
    from mechinterp.cli.steps.export import SUFFIXES

    try:
        circuit = circuits.read_json(graph)
    except ValueError as error:
        raise fail(str(error)) from None
    options = {"scan": scan, "slug": slug} if to == "neuronpedia" else {}
    try:
        path = circuits.write(
            circuit, out or graph.with_name(f"{graph.name.split('.')[0]}.{SUFFIXES[to]}"), to=to, **options
        )
    except ValueError as error:
        raise fail(str(error)) from None
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


@app.command()
def tour(prompt: Annotated[str | None, typer.Argument(help="Prompt for the tour")] = None) -> None:
    """A two-minute tour of smollm2-135m: top predictions and a cache summary."""
    from mechinterp.quickstart import DEFAULT_PROMPT, main

    main(prompt or DEFAULT_PROMPT)


@app.command()
def serve(
    model: Annotated[
        str, typer.Argument(help="An embedded model name, a hub id, a local HF folder or a .gguf file")
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but 127.0.0.1 exposes the model")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port)")] = 8000,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the API key clients must send")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name the endpoint reports (default: MODEL)")] = None,
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for")] = 256,
    max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt, in tokens")] = 4096,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body")] = 1_000_000,
    max_concurrency: Annotated[int, typer.Option(help="Requests in flight before 429")] = 4,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, mps (default: CUDA when available)")] = None,
) -> None:
    """Serve MODEL as an OpenAI-compatible chat endpoint (POST /v1/chat/completions)."""
    import os

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise fail(f"--api-key-env {api_key_env}: that environment variable is not set")
    import mechinterp
    from mechinterp.explain import ChatServer, LocalChat, ServerLimits

    limits = ServerLimits(
        max_tokens=max_tokens,
        max_prompt_tokens=max_prompt_tokens,
        max_body_bytes=max_body_bytes,
        max_concurrency=max_concurrency,
    )
    try:
        loaded = mechinterp.load_model(model, device=device)
        server = ChatServer(
            LocalChat(loaded, name=name or model, progress=False),
            limits,
            host=host,
            port=port,
            api_key=api_key,
        )
    except (ValueError, FileNotFoundError, OSError) as error:
        raise fail(str(error)) from None
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        errors.print(f"warning: serving on {host} without an API key: anyone who can reach it can use it")
    print(f"serving {name or model} at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


def main() -> None:
    """Console-script entry point."""
    app()
