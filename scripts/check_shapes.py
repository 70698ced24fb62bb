"""Check shape annotations against the axis vocabulary in ``mechinterp/dims.py``.

Two rules, for the code under ``mechinterp/`` and ``circuits/``:

1. **Vocabulary.** Every axis named in a jaxtyping annotation (``Float[Tensor, "batch pos"]``)
   is in ``dims.AXES``. The jaxtyping modifiers around a name are allowed: ``*batch``
   (any number of axes), ``#batch`` (broadcastable), ``_pos`` (not checked), ``...``, ``_``,
   literal sizes (``1``, ``n=3``) and arithmetic on names (``pos-1``).
2. **The public API says its shapes.** Every function and method a user calls has no parameter,
   return or dataclass field annotated as a bare ``Tensor`` / ``torch.Tensor`` (also inside a
   union or a container: ``Tensor | None``, ``tuple[Tensor, Tensor]``); it uses a jaxtyping
   annotation or a ``mechinterp.dims`` alias instead. "A user calls" means: the names in the
   ``__all__`` of ``mechinterp``, of each of its packages and of ``circuits`` (followed
   through re-exports to the module that defines them), the public top-level names of the
   modules directly under ``mechinterp/`` (``mechinterp.metrics``), and the public methods,
   ``__init__``, ``__call__``, ``forward`` and dataclass fields of the exported classes and of
   their base classes in this repository. Names with a leading underscore are private.

It reads the source with ``ast`` only (nothing is imported), prints one line per violation
and exits 1 when there is any.

Example:
    $ python scripts/check_shapes.py
    public API without shapes (1):
      mechinterp/lens/heads.py:26: mechinterp.lens.heads.detection_pattern: return is a bare Tensor
    shape annotations: 1 violations (28 axis names, 314 annotations, 178 public functions and classes)
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mechinterp", "circuits")
DIMS = ROOT / "mechinterp" / "dims.py"
# jaxtyping's array types: ``Float[Tensor, "..."]`` and friends.
JAXTYPING_TYPES = {
    "Shaped",
    "Num",
    "Real",
    "Inexact",
    "Float",
    "Float16",
    "Float32",
    "Float64",
    "BFloat16",
    "Complex",
    "Integer",
    "Int",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "UInt",
    "UInt8",
    "Bool",
    "Key",
}
# Methods of an exported class that a user calls besides its public ones.
CALLED_DUNDERS = {"__init__", "__call__"}


def read_axes(dims_path: Path = DIMS) -> tuple[str, ...]:
    """The tuple assigned to ``AXES`` in ``dims.py``."""
    for node in ast.parse(dims_path.read_text()).body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "AXES" and node.value is not None:
            return tuple(ast.literal_eval(node.value))
    raise SystemExit(f"{dims_path}: no AXES = (...) assignment")


def axis_names(spec: str) -> list[str]:
    """The vocabulary names a jaxtyping shape string uses, modifiers and literal sizes removed.

    >>> axis_names("*batch #pos _ ... d_model 1 n=3 pos-1")
    ['batch', 'pos', 'd_model', 'n', 'pos']
    """
    names = []
    for elem in spec.split():
        if elem == "...":
            continue
        elem = elem.lstrip("*#_?")
        if "=" in elem:
            elem = elem.split("=")[0]
        names += [name for name in re.findall(r"[A-Za-z_]\w*", elem) if name.strip("_")]
    return names


@dataclass
class Module:
    """One parsed source file and what its top-level names are bound to."""

    name: str  # dotted module name
    path: Path
    tree: ast.Module
    defs: dict[str, ast.AST] = field(default_factory=dict)  # name -> FunctionDef / ClassDef
    aliases: dict[str, ast.expr] = field(default_factory=dict)  # name -> value (``Source = Tensor | ...``)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (module, attr)
    all_names: list[str] | None = None

    @classmethod
    def parse(cls, name: str, path: Path, source: str | None = None) -> Module:
        text = path.read_text() if source is None else source
        module = cls(name, path, ast.parse(text, filename=str(path)))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(module.tree):  # also imports under ``if TYPE_CHECKING:``
            if isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join([*base, source] if source else base)
                for alias in node.names:
                    module.imports[alias.asname or alias.name] = (source, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    module.imports[alias.asname or alias.name.split(".")[0]] = (alias.name, None)
        for node in module.tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                module.defs[node.name] = node
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and target.id == "__all__":
                    module.all_names = list(ast.literal_eval(node.value))
                elif isinstance(target, ast.Name):
                    module.aliases[target.id] = node.value
        return module


class Repo:
    """The parsed modules of ``mechinterp`` and ``circuits``, by dotted name."""

    def __init__(self, root: Path = ROOT):
        self.modules: dict[str, Module] = {}
        for package in PACKAGES:
            for path in sorted((root / package).rglob("*.py")):
                parts = list(path.relative_to(root).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                self.modules[".".join(parts)] = Module.parse(".".join(parts), path)

    def resolve(self, module: Module, name: str, depth: int = 0) -> tuple[Module, ast.AST] | None:
        """The module and definition ``name`` is bound to in ``module`` (None: outside the repo)."""
        if name in module.defs:
            return module, module.defs[name]
        if name in module.aliases:
            return module, module.aliases[name]
        if name in module.imports and depth < 20:
            source, attr = module.imports[name]
            if attr is not None and source in self.modules:
                return self.resolve(self.modules[source], attr, depth + 1)
        return None


def _is_bare_tensor(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "Tensor") or (
        isinstance(node, ast.Attribute) and node.attr == "Tensor" and isinstance(node.value, ast.Name)
    )


def _is_jaxtyping(node: ast.AST) -> bool:
    value = node.value if isinstance(node, ast.Subscript) else None
    name = value.id if isinstance(value, ast.Name) else value.attr if isinstance(value, ast.Attribute) else ""
    return name in JAXTYPING_TYPES


def has_bare_tensor(annotation: ast.AST | None, repo: Repo, module: Module, depth: int = 0) -> bool:
    """Whether an annotation mentions ``Tensor`` outside a jaxtyping type: in a union, a
    container, or a module-level alias (``TextOrTokens = str | list[str] | Tensor``)."""
    if annotation is None or depth > 20:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return False
    if _is_bare_tensor(annotation):
        return True
    if _is_jaxtyping(annotation):
        return False
    if isinstance(annotation, ast.Name) and (target := repo.resolve(module, annotation.id)) is not None:
        alias_module, alias = target
        if isinstance(alias, ast.expr):
            return has_bare_tensor(alias, repo, alias_module, depth + 1)
    return any(has_bare_tensor(child, repo, module, depth) for child in ast.iter_child_nodes(annotation))


def jaxtyping_specs(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, shape string)`` of every jaxtyping annotation in a parsed file."""
    specs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "[" in node.value:
            try:  # a quoted annotation: "Float[Tensor, 'batch pos']"
                inner = ast.parse(node.value, mode="eval")
            except SyntaxError:
                continue
            specs += [(node.lineno, spec) for _, spec in jaxtyping_specs(inner)]
        elif _is_jaxtyping(node) and isinstance(node.slice, ast.Tuple) and len(node.slice.elts) == 2:
            spec = node.slice.elts[1]
            if isinstance(spec, ast.Constant) and isinstance(spec.value, str):
                specs.append((node.lineno, spec.value))
    return specs


def vocabulary_violations(repo: Repo, axes: tuple[str, ...]) -> tuple[list[str], int]:
    """Lines naming axes outside the vocabulary, and how many annotations were read."""
    allowed, violations, count = set(axes), [], 0
    for module in repo.modules.values():
        for line, spec in jaxtyping_specs(module.tree):
            count += 1
            unknown = [name for name in axis_names(spec) if name not in allowed]
            if unknown:
                where = f"{module.path.relative_to(ROOT)}:{line}"
                violations.append(f'{where}: "{spec}" uses {", ".join(unknown)} (not in dims.AXES)')
    return violations, count


def _dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(target, ast.Name) and target.id == "dataclass") or (
            isinstance(target, ast.Attribute) and target.attr == "dataclass"
        ):
            return True
    return False


def _function_violations(
    repo: Repo, module: Module, node: ast.FunctionDef | ast.AsyncFunctionDef, label: str
) -> list[str]:
    where = f"{module.path.relative_to(ROOT)}:{node.lineno}"
    args = node.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    bad = [
        f"parameter {a.arg}" for a in params if a is not None and has_bare_tensor(a.annotation, repo, module)
    ]
    if has_bare_tensor(node.returns, repo, module):
        bad.append("return")
    return [f"{where}: {label}: {what} is a bare Tensor" for what in bad]


def public_callables(repo: Repo) -> list[tuple[Module, ast.AST, str]]:
    """``(defining module, definition, label)`` of every exported function and class."""
    seen, found = set(), []
    for module in repo.modules.values():
        top_level = module.path.parent.name == "mechinterp" and module.path.name != "__init__.py"
        if module.all_names is not None:
            exported = module.all_names
        elif top_level and not module.path.name.startswith("_"):
            exported = [n for n in module.defs if not n.startswith("_")]
        else:
            continue
        for export in exported:
            target = repo.resolve(module, export)
            if target is None or not hasattr(target[1], "name") or id(target[1]) in seen:
                continue  # outside the repository, or a constant (``METHODS = (...)``)
            seen.add(id(target[1]))
            found.append((target[0], target[1], f"{target[0].name}.{target[1].name}"))
    return found


def _class_violations(repo: Repo, module: Module, node: ast.ClassDef, label: str, seen: set) -> list[str]:
    if id(node) in seen:
        return []
    seen.add(id(node))
    violations = []
    dataclass = _dataclass(node)
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            if not item.name.startswith("_") or item.name in CALLED_DUNDERS:
                violations += _function_violations(repo, module, item, f"{label}.{item.name}")
        elif (
            dataclass
            and isinstance(item, ast.AnnAssign)
            and isinstance(item.target, ast.Name)
            and not item.target.id.startswith("_")
            and has_bare_tensor(item.annotation, repo, module)
        ):
            where = f"{module.path.relative_to(ROOT)}:{item.lineno}"
            violations.append(f"{where}: {label}: field {item.target.id} is a bare Tensor")
    for base in node.bases:  # methods inherited from a class of this repository
        if isinstance(base, ast.Name) and (target := repo.resolve(module, base.id)) is not None:
            base_module, base_node = target
            if isinstance(base_node, ast.ClassDef):
                violations += _class_violations(repo, base_module, base_node, label, seen)
    return violations


def api_violations(repo: Repo) -> tuple[list[str], int]:
    """Bare ``Tensor`` annotations on the public API, and how many callables were read."""
    violations, count = [], 0
    for module, node, label in public_callables(repo):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            count += 1
            violations += _function_violations(repo, module, node, label)
        elif isinstance(node, ast.ClassDef):
            count += 1
            violations += _class_violations(repo, module, node, label, set())
    return violations, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PATH",
        help="a file (relative to the repository root) whose violations are listed but not counted",
    )
    args = parser.parse_args(argv)
    axes = read_axes()
    repo = Repo()
    vocabulary, n_specs = vocabulary_violations(repo, axes)
    api, n_callables = api_violations(repo)
    skipped = [line for line in vocabulary + api if line.split(":")[0] in args.skip]
    vocabulary = [line for line in vocabulary if line not in skipped]
    api = [line for line in api if line not in skipped]
    for title, lines in (
        ("axis names outside the vocabulary", vocabulary),
        ("public API without shapes", api),
        ("not counted (--skip)", skipped),
    ):
        if lines:
            print(f"{title} ({len(lines)}):")
            print("\n".join(f"  {line}" for line in lines))
    total = len(vocabulary) + len(api)
    print(
        f"shape annotations: {total} violations ({len(axes)} axis names, {n_specs} annotations, "
        f"{n_callables} public functions and classes)"
    )
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
