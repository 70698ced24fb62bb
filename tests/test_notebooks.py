"""Every notebook in notebooks/ runs top to bottom in a fresh kernel of this virtual
environment, without errors, and shows what it teaches (a specific printed result and its
figures).

The kernel is ``python3`` from ipykernel (dev extra). jupyter_client starts a kernelspec whose
command is ``python`` with the interpreter running the tests, and each run checks that,
so a system-wide Jupyter cannot substitute its own Python.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PLOTLY_MIME = "application/vnd.plotly.v1+json"

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

# notebook -> (regular expressions its printed output must match, plotly figures it shows)
EXPECTED = {
    "01_quickstart.ipynb": (
        [
            r"top prediction: ' Mary'",
            r"blocks\.3\.attn\.hook_k +\(1, 15, 3, 64\)",  # grouped keys: 3 kv heads
            r"final: 0\n",  # ' Paris' is the top token at the output
        ],
        2,
    ),
    "02_activation_patching.ipynb": (
        [
            r"mean logit diff: clean \+\d+\.\d+, corrupt -\d+\.\d+",
            r"heads with the largest normalised effect:\n  L\d+H\d+: ",
            r"Pearson 0\.[6-9]\d\d",  # AtP agrees with exact patching
        ],
        4,
    ),
    "03_circuit_discovery.ipynb": (
        [
            r"acdc: \d+ of 81 edges, faithfulness 0\.[89]\d, key edges found: True",
            r"eap: \d+ of 81 edges, faithfulness 0\.[89]\d, key edges found: True",
            r"top 10000 edges: faithfulness 0\.[6-9]\d",
            r"graphml +ioi_circuit\.graphml",
            r"read back: \d+ edges",
        ],
        2,
    ),
    "04_probing.ipynb": (
        [
            r"best layer \d+: test accuracy (0\.(8[5-9]|9\d)|1\.00), control task 0\.\d\d, selectivity 0\.[3-9]",
            r"ablated +logit\(are\) - logit\(is\)",
        ],
        1,
    ),
    "07_explanations.ipynb": (
        [
            r"digits: \d+% of contexts activate it\n +.*<<\d+>>",
            r"detection balanced accuracy: explanation \d\.\d\d, shuffled \d\.\d\d",
            r"margin \(correct - swapped balanced_accuracy\): [+-]\d\.\d{3}, bar \+0\.100",
            r"served at http://127\.0\.0\.1:\d+/v1",
            r"same as local: True",
            r"dashboard: .*dashboard\.html",
        ],
        2,
    ),
    "06_token_attribution.ipynb": (
        [
            r"most positive token: '.+' \(\+\d+\.\d+\)",
            r"zero baseline: relative completeness gap \d+\.\d+",
            r"all of the change sits on ' \w+' at position \d+",
            r"\('batch', 'pos', 'head'\) \(1, \d+, 9\)",
            r"log p\(' Paris, France' \| prompt\) = -\d+\.\d+",
            r"error: correct ' Paris, France' is 3 tokens",
        ],
        4,
    ),
    "08_attribution_graphs.ipynb": (
        [
            r"AttributionGraph\(smollm2-135m, 6 tokens: \d+ features",
            r"replacement score 0\.\d{3}, completeness score 0\.\d{3}",
            r"frozen replacement vs graph: max \|difference\| \d\.\de-0[4-9]",
            r"top heads \(layer, head, share\): \[\(\d+, \d+, ",
            r"add up to the weight: True",
            r"feature \d+/\d+: top context ['\"].*<<",
            r"graph folder: \['france\.json', 'graph-metadata\.json'\]",
        ],
        1,
    ),
    "05_sparse_dictionaries.ipynb": (
        [
            r"explained variance 0\.\d+, L0 1[0-6]\.\d",
            r"max logit change with the error term: \d\.\de-0[4-9]",
            r"blocks\.6\.hook_resid_post\.hook_sae_acts_post +\(1, \d+, 1024\)",
            r"reloaded: SAE\(topk, k=16, 576 -> 1024 latents",
        ],
        2,
    ),
    "09_dataset_diffing.ipynb": (
        [
            r"top feature: digits and numbers, z \d+\.\d, replicates on held-out texts: True",
            r"AUC: hypothesis \d\.\d\d, best baseline \d\.\d\d",
            r"most changed feature: capitalised words and names, fires on \d+\.\d% of tokens in base, \d+\.\d% in tuned",
        ],
        2,
    ),
}


def test_every_notebook_is_tested():
    assert sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_is_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs"


def run_notebook(path: Path):
    """Execute ``path`` in a fresh ``python3`` kernel; returns the executed notebook and the
    interpreter the kernel reported."""
    notebook = nbformat.read(path, as_version=4)
    probe = nbformat.v4.new_code_cell("import sys\nprint(sys.executable)")
    probe["id"] = "test-kernel-executable"
    notebook.cells.insert(0, probe)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    executable = notebook.cells.pop(0).outputs[0]["text"].strip()
    return notebook, executable


def printed_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream" and output["name"] == "stdout":
                parts.append(output["text"])
            elif output["output_type"] in ("execute_result", "display_data"):
                parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def plotly_figures(notebook) -> int:
    return sum(
        PLOTLY_MIME in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", [])
    )


# The quickstart runs in the default run; the others (20-60 s of CPU each, on SmolLM2) are
# end-to-end runs: ``-m notebooks`` or ``-m e2e`` runs them.
RUNS = [
    pytest.param(name, marks=[] if name == "01_quickstart.ipynb" else [pytest.mark.e2e])
    for name in sorted(EXPECTED)
]


@pytest.mark.parametrize("name", RUNS)
def test_notebook_runs_top_to_bottom(name):
    notebook, executable = run_notebook(NOTEBOOKS / name)
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert not [o for c in notebook.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    patterns, figures = EXPECTED[name]
    printed = printed_text(notebook)
    for pattern in patterns:
        assert re.search(pattern, printed), (
            f"{name}: no match for {pattern!r} in the output:\n{printed[-3000:]}"
        )
    assert plotly_figures(notebook) == figures
