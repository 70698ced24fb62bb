"""Reading SAE files so that a bad file names itself.

A truncated safetensors file, malformed JSON, an object array in an ``.npz`` or a weight
holding NaN would otherwise surface as the parser's own message (``header too large``, a
bare ``JSONDecodeError``, numpy's pickle notice) or not at all. Each reader here raises a
``ValueError`` that names the file and says what is wrong with it.

Example:
    >>> cfg = read_json(Path("sae/cfg.json"))
    >>> tensors = read_safetensors(Path("sae/sae_weights.safetensors"))
    >>> check_finite(tensors, "sae/sae_weights.safetensors")
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; ``ValueError`` naming the file if it is not one."""
    try:
        found = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
            "is the file truncated or hand-edited?"
        ) from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text (UTF-8 JSON) file: {error}") from error
    if not isinstance(found, dict):
        raise ValueError(f"{path} holds a JSON {type(found).__name__}, expected an object of config fields")
    return found


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file; ``ValueError`` naming the file if it is unreadable."""
    try:
        return load_file(str(path))
    except SafetensorError as error:
        size = path.stat().st_size
        raise ValueError(
            f"{path} is not a readable safetensors file ({error}; {size} bytes): "
            "was it truncated by an interrupted download or copy?"
        ) from error


def read_npz(path: Path) -> dict[str, Tensor]:
    """The arrays of an ``.npz`` as tensors, never unpickling; ``ValueError`` naming the
    file and the array for object arrays and damaged archives."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable .npz archive ({error}); is it truncated?") from error
    tensors = {}
    with archive:
        for name in archive.files:
            try:
                array = np.asarray(archive[name])
            except ValueError as error:  # object arrays need pickle, which we never run
                raise ValueError(
                    f"{path}: array {name!r} holds Python objects, not numbers; "
                    "loading it would unpickle code from the file, so it is refused"
                ) from error
            except (zipfile.BadZipFile, EOFError, OSError) as error:
                raise ValueError(
                    f"{path}: array {name!r} cannot be read ({error}); is it truncated?"
                ) from error
            tensors[name] = torch.from_numpy(array)
    return tensors


def check_finite(tensors: dict[str, Tensor], source: str) -> None:
    """``ValueError`` naming the first floating-point tensor holding NaN or infinity."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            kinds = [k for k, f in (("NaN", torch.isnan), ("inf", torch.isinf)) if bool(f(tensor).any())]
            raise ValueError(
                f"{source}: {name} holds {bad} non-finite value(s) ({' and '.join(kinds)}); "
                "the SAE would produce NaN activations"
            )
