"""Loading a YAML run config: overrides, validation against the schema (``schema.py``), errors.

A config names a model, optionally a prompt-pair dataset and a metric, and a list of steps.
Loading never imports torch or the model code, so a bad config fails in well under a second,
with one line per problem that names the key path and what is allowed:

    steps[2].algorithm: got 'acdcx', allowed: 'eap', 'acdc'

Example:
    >>> config = load_config("configs/ioi_smollm2.yaml", overrides=["dataset.n=4", "steps.1.top_n=50"])
    >>> [step.label for step in config.steps]
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mechinterp.cli.schema import CORPUS_NAMES, AttributionGraphStep, ExplainStep, RecordsDataset, RunConfig


class ConfigError(Exception):
    """An invalid config; ``problems`` holds one ``key.path: what is wrong`` line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``--set key.path=value`` in place: list indices are numbers
    (``steps.1.top_n=50`` or ``steps[1].top_n=50``) and the value is parsed as YAML.

    Raises:
        ConfigError: no ``=``, an index out of range, or a path through a non-container.
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError([f"--set {assignment!r}: expected KEY.PATH=VALUE, e.g. steps.1.top_n=50"])
    parts = key.replace("[", ".").replace("]", "").split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError([f"--set {assignment!r}: value is not valid YAML ({error})"]) from error
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "the config"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    [
                        f"--set {assignment!r}: {where} is a list of {len(node)} items; use an index 0..{len(node) - 1}"
                    ]
                )
            index: int | str = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and part not in node:
                node[part] = {}
        else:
            raise ConfigError([f"--set {assignment!r}: {where} is a value ({node!r}), not a section or list"])
        if last:
            node[index] = value
        else:
            node = node[index]


def parse_yaml(text: str, source: str) -> dict:
    """The top-level mapping of a YAML document (``ConfigError`` for syntax errors)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"{source} is not valid YAML: {error}"]) from error
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the config must be a mapping of keys (model, dataset, steps, ...)"])
    return data


def validate(data: dict) -> RunConfig:
    """A ``RunConfig`` from a plain dict, or ``ConfigError`` listing every problem."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError([describe(e) for e in error.errors()]) from None


def read_text(path: Path) -> str:
    """The file's text, or ``ConfigError`` naming the first byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            [
                f"config file {path} is not UTF-8 text: byte 0x{raw[error.start]:02x} at offset "
                f"{error.start}; save it as UTF-8"
            ]
        ) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read, override (``--set``), validate and resolve a config file.

    A records dataset's relative ``path``, an explain step's corpus file and an
    attribution_graph step's transcoder path are resolved against the config file's folder
    and must exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {path} does not exist"])
    data = parse_yaml(read_text(path), str(path))
    for assignment in overrides:
        apply_override(data, assignment)
    config = validate(data)
    if isinstance(config.dataset, RecordsDataset):
        records = (path.parent / config.dataset.path).resolve()
        if not records.is_file():
            raise ConfigError([f"dataset.path: file {records} does not exist"])
        config = config.model_copy(
            update={"dataset": config.dataset.model_copy(update={"path": str(records)})}
        )
    steps = list(config.steps)
    for i, step in enumerate(steps):
        if isinstance(step, ExplainStep) and step.corpus not in CORPUS_NAMES:
            corpus = (path.parent / step.corpus).resolve()
            if not corpus.is_file():
                raise ConfigError([f"steps[{i}].corpus: file {corpus} does not exist"])
            steps[i] = step.model_copy(update={"corpus": str(corpus)})
        if isinstance(step, AttributionGraphStep) and step.transcoders != "random":
            transcoders = (path.parent / step.transcoders).resolve()
            if not transcoders.exists():
                raise ConfigError([f"steps[{i}].transcoders: {transcoders} does not exist"])
            steps[i] = step.model_copy(update={"transcoders": str(transcoders)})
    return config.model_copy(update={"steps": steps})


def describe(error: dict) -> str:
    """One pydantic error as ``key.path: what is wrong, what is allowed``."""
    loc = _walk(error["loc"])[0]
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        section = _walk(error["loc"][:-1])[1]
        allowed = ", ".join(section.model_fields) if section else "see configs/README.md"
        return f"{loc}: unknown key; allowed keys here: {allowed}"
    if kind == "literal_error":
        return f"{loc}: got {value!r}, allowed: {ctx['expected'].replace(' or ', ', ')}"
    if kind == "union_tag_invalid":
        return f"{_join(loc, 'kind')}: got {ctx['tag']!r}, allowed: {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        return f"{_join(loc, 'kind')}: missing; every {loc or 'entry'} needs a kind"
    if kind == "missing":
        return f"{loc}: required key missing"
    if kind == "value_error":
        message = error["msg"].removeprefix("Value error, ")
        return message if not loc else f"{loc}: {message}"
    return f"{loc or 'config'}: {error['msg'][0].lower()}{error['msg'][1:]}, got {value!r}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    """The config sections inside an annotation (through ``list``, ``|``, ``Annotated``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _union_members(arg)
    return found


def _tags(candidates: list[type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """Union members by their ``kind`` tag."""
    return {
        typing.get_args(c.model_fields["kind"].annotation)[0]: c
        for c in candidates
        if "kind" in c.model_fields
    }


def _walk(loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """The readable path of an error location (``('steps', 2, 'circuit', 'algorithm')`` ->
    ``steps[2].algorithm``: union tags dropped) and the section class it ends in, if any."""
    text, candidates = "", [RunConfig]
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        tags = _tags(candidates)
        if len(candidates) > 1 and part in tags:
            candidates = [tags[part]]
            continue
        fields = candidates[0].model_fields if len(candidates) == 1 else {}
        candidates = _union_members(fields[part].annotation) if part in fields else []
        text = _join(text, str(part))
    return text, candidates[0] if len(candidates) == 1 else None
