"""The YAML run-config schema (pydantic v2) and its loading: overrides, validation, errors.

A config names a model, optionally a prompt-pair dataset and a metric, and a list of steps.
Every model is frozen and forbids unknown keys; choices are ``Literal`` enums. Loading never
imports torch or the model code, so a bad config fails in well under a second, with one line
per problem that names the key path and what is allowed:

    steps[2].algorithm: got 'acdcx', allowed: 'eap', 'acdc'

The site kinds, algorithms and probe datasets are repeated here (rather than imported from
``mechinterp.patching`` / ``circuits``, which import torch); ``tests/test_cli.py`` checks they
match the library.

Example:
    >>> config = load_config("configs/ioi_smollm2.yaml", overrides=["dataset.n=4", "steps.1.top_n=50"])
    >>> [step.label for step in config.steps]
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)

SiteKind = Literal[
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post", "z", "q", "k", "v", "pattern"
]
Algorithm = Literal["edge-patching", "eap", "eap-ig", "acdc"]
ExportFormat = Literal["json", "eap-ig", "neuronpedia", "graphml", "dot", "html"]
ProbeData = Literal["number_agreement", "entity_category"]
ExplainUnit = Literal["neuron", "head_output", "head_attention", "sae_latent"]
ScoreMethod = Literal["detection", "fuzzing", "simulation"]
TokenMethod = Literal[
    "integrated_gradients", "gradient_x_input", "saliency", "occlusion", "attention_rollout"
]
IntegrationRule = Literal[
    "gauss_legendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
]
CorpusName = Literal["default", "docstrings", "wordnet", "fortunes"]  # mechinterp.data.corpus
CORPUS_NAMES = typing.get_args(CorpusName)
ProbeHook = Literal["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"]


class ConfigError(Exception):
    """An invalid config; ``problems`` holds one ``key.path: what is wrong`` line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """``name``: an embedded model (``smollm2-135m``, ``toy-induction-2l``), a hub id, a local
    HF directory or a ``.gguf`` file; ``device``: ``auto`` = CUDA when available."""

    name: str = "smollm2-135m"
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class IOIDataset(_Section):
    """Indirect-object identification pairs (``mechinterp.data.ioi_pairs``)."""

    kind: Literal["ioi"]
    n: PositiveInt = 8
    seed: int = 0


class InductionDataset(_Section):
    """Repeated-random-token pairs (``mechinterp.data.induction_pairs``): ``n_pos`` tokens per
    prompt, a repeated block of ``block_len`` tokens."""

    kind: Literal["induction"]
    n: PositiveInt = 8
    seed: int = 0
    n_pos: int = Field(default=40, ge=8)
    block_len: PositiveInt = 10


class RecordsDataset(_Section):
    """A ``.json`` / ``.jsonl`` file of ``{clean, corrupt, correct, incorrect}`` records;
    a relative ``path`` is read from the config file's folder. ``n``: use the first n."""

    kind: Literal["records"]
    path: str
    n: PositiveInt | None = None


Dataset = Annotated[IOIDataset | InductionDataset | RecordsDataset, Field(discriminator="kind")]


class _StepBase(_Section):
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")

    @property
    def label(self) -> str:
        """The step's name (its folder is ``steps/NN_label``): ``name``, else its kind."""
        return self.name or self.kind


class _SweepFields(_StepBase):
    site: SiteKind = "resid_pre"
    per_position: bool = True
    per_head: bool = True
    layers: list[NonNegativeInt] | None = None
    heads: list[NonNegativeInt] | None = None
    direction: Literal["denoise", "noise"] = "denoise"
    top_n: PositiveInt = 10


class PatchingStep(_SweepFields):
    """An exact activation-patching sweep (``mechinterp.patching.patch_sweep``)."""

    kind: Literal["patching"]
    ablation: Literal["resample", "zero", "mean"] = "resample"


class AttributionStep(_SweepFields):
    """Attribution patching (AtP / AtP*); ``compare_with`` names an earlier patching step
    over the same grid to compare against."""

    kind: Literal["attribution"]
    method: Literal["atp", "atp*"] = "atp"
    compare_with: str | None = None


class CircuitStep(_StepBase):
    """Circuit discovery (``circuits.ALGORITHMS``) and its faithfulness curve.

    Scoring algorithms (``edge-patching``, ``eap``, ``eap-ig``) keep the ``top_n`` edges
    (``level: edge``; ``selection: greedy`` grows them from the logits instead of taking the
    largest scores) or the edges between the ``top_n`` best nodes (``level: node``) before
    pruning; ``ig_steps`` is EAP-IG's number of integration steps; ``threshold`` (ACDC)
    removes edges whose effect is smaller. The curve has ``faithfulness_points`` edge counts from 0 to
    ``faithfulness_max_edges`` (default: 4 x ``top_n``)."""

    kind: Literal["circuit"]
    algorithm: Algorithm = "eap"
    top_n: PositiveInt = 200
    level: Literal["edge", "node"] = "edge"
    selection: Literal["top_n", "greedy"] = "top_n"
    threshold: float = Field(default=0.05, gt=0)
    ig_steps: PositiveInt = 5
    faithfulness_points: int = Field(default=9, ge=2)
    faithfulness_max_edges: PositiveInt | None = None


class LogitLensStep(_StepBase):
    """The logit lens on ``prompts`` (``targets``: one single-token answer per prompt)."""

    kind: Literal["logit_lens"]
    prompts: list[str] = Field(min_length=1)
    targets: list[str] | None = None
    top_k: PositiveInt = 5
    include_mid: bool = False

    @model_validator(mode="after")
    def _one_target_per_prompt(self) -> LogitLensStep:
        if self.targets is not None and len(self.targets) != len(self.prompts):
            raise ValueError(f"targets: {len(self.targets)} targets for {len(self.prompts)} prompts")
        return self


class ProbeStep(_StepBase):
    """Per-layer probes on a built-in probing dataset, with shuffled and control-task controls."""

    kind: Literal["probe"]
    dataset: ProbeData = "number_agreement"
    n: int = Field(default=400, ge=10)
    hook: ProbeHook = "hook_resid_post"
    layers: list[NonNegativeInt] | None = None
    probe: Literal["logistic", "linear"] = "logistic"
    split: Literal["types", "random"] = "types"
    max_epochs: PositiveInt = 500
    controls: bool = True
    seed: int = 0


class SAEStep(_StepBase):
    """Train (or ``load``) a sparse autoencoder on ``hook``, evaluate it on held-out text and
    write dashboards of its most frequent latents (``mechinterp.sae``)."""

    kind: Literal["sae"]
    hook: str = Field(default="blocks.15.hook_resid_post", pattern=r"^[A-Za-z0-9_.]+$")
    load: str | None = None
    architecture: Literal["topk", "jumprelu", "relu", "gated"] = "topk"
    d_sae: PositiveInt = 4608
    k: PositiveInt = 32
    corpus: CorpusName = "default"
    train_texts: PositiveInt = 20000
    samples: PositiveInt = 1_000_000
    batch_size: PositiveInt = 1024
    lr: float = Field(default=3e-3, gt=0)
    context: PositiveInt = 128
    eval_texts: PositiveInt = 200
    dashboards: int = Field(default=8, ge=0)
    seed: int = 0


class ExportStep(_StepBase):
    """Write the circuit of an earlier circuit step (``circuit``: its name) in ``formats``."""

    kind: Literal["export"]
    circuit: str
    formats: list[ExportFormat] = Field(default=["json", "dot"], min_length=1)
    scan: str | None = None  # the neuronpedia file's Neuronpedia model id (default: the model name)
    slug: str | None = None  # the neuronpedia file's graph name (default: new per export)


class ChatEndpoint(_Section):
    """The explainer or scorer: ``base_url`` unset = a local model loaded by name (``model``);
    set = an OpenAI-compatible endpoint serving ``model`` (key from ``api_key_env``)."""

    base_url: str | None = None
    model: str = "smollm2-135m"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: PositiveInt = 4
    timeout: float = Field(default=60.0, gt=0)


class ExplainStep(_StepBase):
    """Natural-language explanations of ``indices`` (neurons or heads) of block ``layer``, or
    latents of the SAE an earlier ``sae`` step wrote (``unit: sae_latent``, ``sae``: its
    name), from examples in ``corpus`` (a corpus of ``mechinterp.data.corpus`` by name, or a
    text file of documents separated by blank lines, relative to the config file), scored by
    ``methods`` against shuffled explanations. ``check_scorer`` first checks the scorer on
    planted units (``mechinterp.explain.check_scorer``) and shows the result next to the
    scores."""

    kind: Literal["explain"]
    unit: ExplainUnit = "neuron"
    layer: NonNegativeInt | None = None
    sae: str | None = None
    indices: list[NonNegativeInt] = Field(min_length=2)
    corpus: str = "default"  # default | docstrings | wordnet | fortunes | a text file
    max_contexts: PositiveInt = 400
    context_len: int = Field(default=32, ge=4)
    n_similar: NonNegativeInt = 0
    methods: list[ScoreMethod] = Field(default=["detection", "fuzzing"], min_length=1)
    explainer: ChatEndpoint = ChatEndpoint()
    scorer: ChatEndpoint = ChatEndpoint()
    check_scorer: bool = False

    @model_validator(mode="after")
    def _unit_source(self) -> ExplainStep:
        if self.unit == "sae_latent":
            if self.sae is None or self.layer is not None:
                raise ValueError("unit sae_latent needs sae: the name of an earlier sae step (and no layer)")
        elif self.layer is None or self.sae is not None:
            raise ValueError(f"unit {self.unit} needs layer: a block index (and no sae)")
        return self


class TokenAttributionStep(_StepBase):
    """Which input tokens drove each answer (``mechinterp.token_attribution``), by several
    methods side by side.

    With ``prompts`` (and ``correct``: one answer per prompt, or one for all; ``incorrect``
    optional), those prompts are explained; without, the run's prompt pairs (the first
    ``n``), with the corrupt prompts as the baseline (``baseline: corrupt``)."""

    kind: Literal["token_attribution"]
    prompts: list[str] | None = Field(default=None, min_length=1)
    correct: list[str] | None = Field(default=None, min_length=1)
    incorrect: list[str] | None = Field(default=None, min_length=1)
    target: Literal["logit", "continuation"] = "logit"
    methods: list[TokenMethod] = Field(
        default=["integrated_gradients", "gradient_x_input", "occlusion", "attention_rollout"], min_length=1
    )
    steps: PositiveInt = 64
    rule: IntegrationRule = "gauss_legendre"
    baseline: Literal["pad", "zero", "corrupt"] | NonNegativeInt | None = None
    layer: str | None = None
    n: PositiveInt = 4

    @model_validator(mode="after")
    def _consistent(self) -> TokenAttributionStep:
        if self.prompts is None:
            if self.correct is not None or self.incorrect is not None:
                raise ValueError("correct / incorrect go with prompts; prompt pairs carry their own answers")
        else:
            if self.correct is None:
                raise ValueError("prompts need correct: one answer per prompt, or one for all")
            if self.baseline == "corrupt":
                raise ValueError(
                    "baseline 'corrupt' needs the run's prompt pairs: drop prompts, or use pad / zero / a token id"
                )
            for key in ("correct", "incorrect"):
                answers = getattr(self, key)
                if answers is not None and len(answers) not in (1, len(self.prompts)):
                    raise ValueError(f"{key}: {len(answers)} answers for {len(self.prompts)} prompts")
        if self.layer is not None and "attention_rollout" in self.methods:
            raise ValueError("methods: attention_rollout has no layer variant; drop it or drop layer")
        return self


Step = Annotated[
    PatchingStep
    | AttributionStep
    | CircuitStep
    | LogitLensStep
    | ProbeStep
    | ExportStep
    | ExplainStep
    | TokenAttributionStep
    | SAEStep,
    Field(discriminator="kind"),
]
PAIR_STEPS = ("patching", "attribution", "circuit")


# step keys that name an earlier step, and the kind that step must be
STEP_REFERENCES = {"compare_with": "patching", "circuit": "circuit", "sae": "sae"}


class RunConfig(_Section):
    """A whole run: model, dataset of prompt pairs, metric, steps (run in order)."""

    name: str | None = None
    model: ModelConfig = ModelConfig()
    dataset: Dataset | None = None
    metric: Literal["logit_diff", "prob_diff"] = "logit_diff"
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_steps(self) -> RunConfig:
        first_index: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            if step.label in first_index:
                raise ValueError(
                    f"steps[{i}].name: {step.label!r} is already the name of steps[{first_index[step.label]}]; "
                    "give each step a distinct name"
                )
            first_index[step.label] = i
            if step.kind in PAIR_STEPS and self.dataset is None:
                raise ValueError(f"steps[{i}] ({step.kind}) needs prompt pairs: add a top-level 'dataset'")
            for key, wanted in STEP_REFERENCES.items():
                reference = getattr(step, key, None)
                if reference is not None and (
                    reference not in first_index or self.steps[first_index[reference]].kind != wanted
                ):
                    earlier = [s.label for s in self.steps[:i] if s.kind == wanted]
                    raise ValueError(
                        f"steps[{i}].{key}: {reference!r} is not an earlier {wanted} step; earlier {wanted} "
                        f"steps: {earlier or 'none'}"
                    )
        return self


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

    A records dataset's relative ``path`` is resolved against the config file's folder and
    must exist.
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
