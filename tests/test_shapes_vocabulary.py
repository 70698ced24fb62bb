"""``scripts/check_shapes.py``: jaxtyping annotations use the ``mechinterp.dims`` vocabulary,
and the public API says the shapes of its tensors (no bare ``Tensor``)."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_shapes.py"


@pytest.fixture(scope="module")
def check_shapes():
    """The script as a module (it is not part of a package)."""
    spec = importlib.util.spec_from_file_location("check_shapes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def repo(check_shapes):
    return check_shapes.Repo()


def test_the_code_base_passes_the_shape_check():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 violations" in run.stdout


def test_axis_names_drop_jaxtyping_modifiers(check_shapes):
    assert check_shapes.axis_names("*batch #pos _ ... d_model 1 n=3 pos-1 _answer") == [
        "batch",
        "pos",
        "d_model",
        "n",
        "pos",
        "answer",
    ]


def test_the_vocabulary_is_the_one_in_dims(check_shapes):
    from mechinterp import dims

    assert check_shapes.read_axes() == dims.AXES
    assert len(set(dims.AXES)) == len(dims.AXES)


@pytest.mark.parametrize(
    ("annotation", "bare"),
    [
        ("Tensor", True),
        ("torch.Tensor", True),
        ("Tensor | None", True),
        ("tuple[Float[Tensor, 'batch'], Tensor]", True),
        ("Callable[[Tensor], Tensor]", True),
        ("'Tensor'", True),
        ("TextOrTensor", True),  # a module-level alias
        ("Float[Tensor, 'batch pos']", False),
        ("Int[Tensor, 'batch'] | None", False),
        ("dict[str, Float[Tensor, '...']]", False),
        ("Tokens", False),  # a mechinterp.dims alias
    ],
)
def test_bare_tensors_are_found_in_unions_containers_and_aliases(check_shapes, repo, annotation, bare):
    source = "from mechinterp.dims import Tokens\nTextOrTensor = str | list[str] | Tensor\n"
    module = check_shapes.Module.parse("mechinterp.example", ROOT / "mechinterp" / "example.py", source)
    node = ast.parse(annotation, mode="eval").body
    assert check_shapes.has_bare_tensor(node, repo, module) is bare
