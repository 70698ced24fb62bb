"""Run-folder files shared by the runner and the report: atomic text writes and the names of
step folders.

Example:
    >>> atomic_write_text(Path("runs/ioi") / "environment.json", "{}")
    >>> step_dir_name(0, "resid_pre")
    '01_resid_pre'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)  # mkstemp creates owner-only files; results are for sharing
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def step_dir_name(index: int, label: str) -> str:
    """The folder of step ``index`` (0-based) called ``label``: ``NN_label``, numbered from 1."""
    return f"{index + 1:02d}_{label}"
