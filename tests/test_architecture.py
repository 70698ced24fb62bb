"""Imports point one way (DESIGN.md, section 3): ``scripts/check_imports.py`` finds no cycle
between files and no upward import in mechinterp and circuits, and it does catch each kind of
violation on a small package written here. Reads source with ``ast`` only: no model, no torch."""

import importlib.util
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_imports.py"

spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
check_imports = importlib.util.module_from_spec(spec)
sys.modules["check_imports"] = check_imports  # dataclasses look their module up by name
spec.loader.exec_module(check_imports)


def test_repository_imports_point_one_way():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no cycles, no upward imports" in run.stdout


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(source))
    for package in check_imports.PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


def test_finds_lazy_upward_imports_and_cycles_but_not_type_checking_ones(tmp_path):
    root = write_package(
        tmp_path,
        {
            "mechinterp/models/__init__.py": "",
            "mechinterp/models/lm.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from mechinterp.plotting.figures import figure  # never runs: allowed
                def splice():
                    from mechinterp.sae.model import SAE  # lazy, still upward
            """,
            "mechinterp/sae/__init__.py": "",
            "mechinterp/sae/model.py": "from mechinterp.models import lm\n",
            "mechinterp/plotting/__init__.py": "",
            "mechinterp/plotting/figures.py": "from mechinterp.models.lm import splice\n",
        },
    )
    _, problems = check_imports.violations(root)
    assert any(
        p.startswith("import cycle between mechinterp.models.lm, mechinterp.sae.model") for p in problems
    )
    assert [p for p in problems if p.startswith("upward")] == [
        "upward lazy import: mechinterp.models.lm:6 (models/data/metrics) -> mechinterp.sae.model "
        "(patching/lens/probing/sae)"
    ]
    assert check_imports.main(["--root", str(root)]) == 1


def test_reexports_resolve_to_the_defining_file(tmp_path):
    """``from mechinterp.patching import run`` inside the package reads ``engine.py``, not the
    ``__init__`` that re-exports it: no false cycle through the ``__init__``."""
    root = write_package(
        tmp_path,
        {
            "mechinterp/patching/__init__.py": """
                from mechinterp.patching.engine import run
                from mechinterp.patching.sweep import sweep
            """,
            "mechinterp/patching/engine.py": "def run(): ...\n",
            "mechinterp/patching/sweep.py": "from mechinterp.patching import run\n",
        },
    )
    graph, problems = check_imports.violations(root)
    assert problems == []
    assert {(i.source, i.target) for i in graph.imports} == {
        ("mechinterp.patching", "mechinterp.patching.engine"),
        ("mechinterp.patching", "mechinterp.patching.sweep"),
        ("mechinterp.patching.sweep", "mechinterp.patching.engine"),
    }


def test_every_module_needs_a_layer(tmp_path):
    root = write_package(tmp_path, {"mechinterp/newpkg/__init__.py": ""})
    _, problems = check_imports.violations(root)
    assert problems == [f"no layer for mechinterp.newpkg: add it to LAYERS in {SCRIPT}"]
