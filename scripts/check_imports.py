"""Check that imports in ``mechinterp`` and ``circuits`` point one way (DESIGN.md, section 3).

Reads every module with ``ast`` (nothing is imported or executed) and builds the file graph:
one node per ``.py`` file, one edge per import of another file of the two packages, whether
the import sits at module level or lazily inside a function. Imports under
``if TYPE_CHECKING:`` are skipped: they never run.

How an import becomes an edge:

- ``import a.b.c`` and ``from a.b.c import x`` import the file ``a/b/c.py`` (or
  ``a/b/c/__init__.py``); when ``x`` is itself a submodule, they import ``a/b/c/x.py``.
- ``from a.b import X`` where ``a/b/__init__.py`` only re-exports ``X`` (``from a.b.m import
  X``) imports ``a/b/m.py``, the file that defines ``X``, followed through any chain of
  re-exports. So a package's own files may use its public names without a false cycle
  through its ``__init__``.
- Parent packages, which Python also runs on the way, are not edges: every file would
  otherwise sit in a cycle with its package's ``__init__``.

Two rules are checked, and every violation is listed:

1. no cycles between files: every strongly connected component of the graph has one file;
2. imports point down the layer table ``LAYERS`` below (same layer is allowed). In
   particular none of models, data, metrics, patching, lens, probing, sae imports
   distributed, plotting or cli.

Exit status 0 when clean, 1 with the list otherwise.

Example:
    $ python scripts/check_imports.py
    imports: 129 files, 348 edges, no cycles, no upward imports
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("mechinterp", "circuits")

# Bottom to top. A module belongs to the longest entry that equals it or contains it; an entry in
# ``OWN_FILE_ONLY`` holds only its own file (``mechinterp``: the package ``__init__``).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mechinterp", "mechinterp.dims", "mechinterp.precision"),
    ("mechinterp.models", "mechinterp.data", "mechinterp.metrics"),
    ("mechinterp.patching", "mechinterp.lens", "mechinterp.probing", "mechinterp.sae"),
    ("circuits", "mechinterp.token_attribution", "mechinterp.explain", "mechinterp.datasets"),
    ("mechinterp.distributed",),
    ("mechinterp.plotting",),
    ("mechinterp.cli", "mechinterp.quickstart", "mechinterp.__main__"),
)
OWN_FILE_ONLY = frozenset({"mechinterp"})


@dataclass(frozen=True)
class Import:
    """One resolved import: ``source`` imports ``target`` at ``line`` (``lazy``: inside a function)."""

    source: str
    target: str
    line: int
    lazy: bool


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``PACKAGES`` under ``root``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, lazy: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``tree``, with whether it runs inside a function; the body
    of ``if TYPE_CHECKING:`` is skipped (its ``else:`` is not)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, lazy
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _import_nodes(ast.Module(body=[child], type_ignores=[]), lazy)
        else:
            inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _import_nodes(node, inner)


class ImportGraph:
    """The file graph of ``PACKAGES`` under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.files = module_files(root)
        self.trees = {name: ast.parse(path.read_text(), str(path)) for name, path in self.files.items()}
        self.imports = sorted(
            {imp for name in self.files for imp in self._imports_of(name)},
            key=lambda imp: (imp.source, imp.line, imp.target),
        )

    def _is_package(self, module: str) -> bool:
        return self.files[module].name == "__init__.py"

    def _absolute(self, module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if self._is_package(module) else 0)]
        return ".".join(base + ([node.module] if node.module else []))

    def defining_module(self, module: str, name: str, seen: frozenset[str] = frozenset()) -> str:
        """The file ``from module import name`` really reads: a submodule called ``name``, or
        the module a package ``__init__`` re-exports ``name`` from, followed to its end."""
        if f"{module}.{name}" in self.files:
            return f"{module}.{name}"
        if module in seen or not self._is_package(module):
            return module
        for node, _ in _import_nodes(self.trees[module]):
            if isinstance(node, ast.ImportFrom):
                source = self._absolute(module, node)
                for alias in node.names:
                    if (alias.asname or alias.name) == name and source in self.files:
                        return self.defining_module(source, alias.name, seen | {module})
        return module

    def _imports_of(self, module: str) -> Iterator[Import]:
        for node, lazy in _import_nodes(self.trees[module]):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = self._absolute(module, node)
                if source not in self.files:
                    continue
                targets = [
                    source if alias.name == "*" else self.defining_module(source, alias.name)
                    for alias in node.names
                ]
            for target in targets:
                if target in self.files and target != module:
                    yield Import(module, target, node.lineno, lazy)

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one file (Tarjan), each sorted."""
        edges: dict[str, set[str]] = {name: set() for name in self.files}
        for imp in self.imports:
            edges[imp.source].add(imp.target)
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        components = []

        def visit(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
            for nxt in sorted(edges[node]):
                if nxt not in index:
                    visit(nxt)
                    low[node] = min(low[node], low[nxt])
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

        for node in sorted(edges):
            if node not in index:
                visit(node)
        return sorted(components)


def layer_of(module: str) -> int | None:
    """Index of ``module``'s layer in ``LAYERS``; ``None`` when no entry holds it."""
    best: tuple[int, int] | None = None
    for level, entries in enumerate(LAYERS):
        for entry in entries:
            holds = module == entry or (entry not in OWN_FILE_ONLY and module.startswith(entry + "."))
            if holds and (best is None or len(entry) > best[0]):
                best = (len(entry), level)
    return None if best is None else best[1]


def _layer_name(level: int) -> str:
    return "/".join(entry.rsplit(".", 1)[-1] for entry in LAYERS[level])


def violations(root: Path) -> tuple[ImportGraph, list[str]]:
    """The import graph under ``root`` and one readable line per broken rule."""
    graph = ImportGraph(root)
    problems = [
        f"no layer for {name}: add it to LAYERS in {__file__}"
        for name in graph.files
        if layer_of(name) is None
    ]
    for component in graph.cycles():
        inside = [imp for imp in graph.imports if imp.source in component and imp.target in component]
        links = "; ".join(f"{imp.source}:{imp.line} -> {imp.target}" for imp in inside)
        problems.append(f"import cycle between {', '.join(component)} ({links})")
    for imp in graph.imports:
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source is not None and target is not None and target > source:
            how = "lazy import" if imp.lazy else "import"
            problems.append(
                f"upward {how}: {imp.source}:{imp.line} ({_layer_name(source)}) -> "
                f"{imp.target} ({_layer_name(target)})"
            )
    return graph, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    graph, problems = violations(args.root)
    if problems:
        print(f"{len(problems)} import rule violation(s) (see DESIGN.md, section 3):")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"imports: {len(graph.files)} files, {len(graph.imports)} edges, no cycles, no upward imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
