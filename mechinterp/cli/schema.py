"""The YAML run-config schema (pydantic v2): one frozen section per concern, one step model
per step kind.

Every model is frozen and forbids unknown keys; choices are ``Literal`` enums. Nothing here
imports torch or the model code (``config.py`` loads and validates files against it). The
site kinds, algorithms and probe datasets are repeated here (rather than imported from
``mechinterp.patching`` / ``circuits``, which import torch); ``tests/test_cli.py`` checks they
match the library.

Example:
    >>> RunConfig.model_validate({"steps": [{"kind": "logit_lens", "prompts": ["The Eiffel Tower is in"]}]})
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

SiteKind = Literal[
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post", "z", "q", "k", "v", "pattern"
]
Algorithm = Literal["edge-patching", "eap", "eap-ig", "acdc", "acdc-exact", "relp"]
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
TranscoderKind = Literal["plt", "clt"]  # circuits.tracing.transcoders
TranscoderActivation = Literal["relu", "jumprelu", "topk"]
TranscoderInput = Literal["mlp_in", "mlp_normalized"]
ProbeHook = Literal["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"]


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


RelPRule = Literal["ln", "ah", "identity", "half"]
DEFAULT_RELP_RULES: list[RelPRule] = ["ln", "identity", "half"]  # relevance.DEFAULT_RULES


class AttributionStep(_SweepFields):
    """Attribution patching (AtP / AtP* / RelP); ``compare_with`` names an earlier patching step
    over the same grid to compare against; ``relp_rules``: RelP's LRP rules."""

    kind: Literal["attribution"]
    method: Literal["atp", "atp*", "relp"] = "atp"
    relp_rules: list[RelPRule] = Field(default=DEFAULT_RELP_RULES)
    compare_with: str | None = None


class CircuitStep(_StepBase):
    """Circuit discovery (``circuits.ALGORITHMS``) and its faithfulness curve.

    Scoring algorithms (``edge-patching``, ``eap``, ``eap-ig``, ``relp``) keep the ``top_n`` edges
    (``level: edge``; ``selection: greedy`` grows them from the logits instead of taking the
    largest scores) or the edges between the ``top_n`` best nodes (``level: node``) before
    pruning; ``ig_steps`` is EAP-IG's number of integration steps; ``relp_rules`` RelP's LRP
    rules; ``threshold`` (ACDC:
    ``acdc``, ``acdc-exact``) removes edges whose effect is smaller. The curve has
    ``faithfulness_points`` edge counts from 0 to ``faithfulness_max_edges`` (default: 4 x
    ``top_n``)."""

    kind: Literal["circuit"]
    algorithm: Algorithm = "eap"
    top_n: PositiveInt = 200
    level: Literal["edge", "node"] = "edge"
    selection: Literal["top_n", "greedy"] = "top_n"
    threshold: float = Field(default=0.05, gt=0)
    ig_steps: PositiveInt = 5
    relp_rules: list[RelPRule] = Field(default=DEFAULT_RELP_RULES)
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


class AttributionGraphStep(_StepBase):
    """The attribution graph of one ``prompt`` over transcoder features (``circuits.tracing``):
    trace, prune, and write the graph JSON, a circuit-tracer server folder and an HTML view.

    ``transcoders``: ``random`` (random transcoders of ``width`` features per layer,
    ``transcoder_kind``, ``activation``, ``k`` (``topk``), ``seed``: a demo of the mechanics,
    not an explanation of the model) or a path, relative to the config file, that
    ``load_transcoders`` reads (circuit-tracer's CLT layout, or a folder of SAE folders).
    ``max_feature_nodes``: trace the incoming edges of only this many features, the most
    influential first (long prompts; ``trace``'s argument). ``head_split``: split each kept edge
    over the attention heads that carry it."""

    kind: Literal["attribution_graph"]
    prompt: str = Field(min_length=1)
    transcoders: str = "random"
    width: PositiveInt = 64
    transcoder_kind: TranscoderKind = "clt"
    activation: TranscoderActivation = "topk"
    k: PositiveInt = 4
    seed: int = 0
    input_site: TranscoderInput | None = None
    max_logits: PositiveInt = 10
    logit_probability: float = Field(default=0.95, gt=0, le=1)
    max_feature_nodes: PositiveInt | None = None
    node_threshold: float = Field(default=0.8, gt=0, le=1)
    edge_threshold: float = Field(default=0.98, gt=0, le=1)
    batch_size: PositiveInt | None = None
    head_split: bool = True
    scan: str | None = None  # the graph's Neuronpedia model id (default: the model name)
    slug: str | None = None  # the graph's name (default: the step's name)

    @model_validator(mode="after")
    def _random_keys_with_random_transcoders(self) -> AttributionGraphStep:
        random_only = {"width", "transcoder_kind", "activation", "k", "seed"} & self.model_fields_set
        if self.transcoders != "random" and random_only:
            raise ValueError(
                f"{', '.join(sorted(random_only))} go with transcoders: random only; a transcoder file "
                "or folder carries its own shape"
            )
        if "k" in self.model_fields_set and self.activation != "topk":
            raise ValueError(f"k applies to activation: topk only (got activation: {self.activation})")
        return self


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


class DiffStep(_StepBase):
    """Corpus diffing through the latents of the SAE an earlier ``sae`` step wrote (``sae``:
    its name): which latents fire more often in ``corpus_b`` than in ``corpus_a`` (each a
    corpus of ``mechinterp.data.corpus`` by name, or a text file of documents separated by
    blank lines; ``max_texts`` of each), ranked by prior-smoothed log-odds with replication
    on ``holdout`` of the texts (``mechinterp.datasets.diff_corpora``). ``explain`` top
    latents are explained and scored; ``hypotheses`` (properties of ``corpus_b``'s texts) are
    checked on held-out texts next to ``baselines`` and shuffled words. ``describe`` latents
    most over-represented in ``corpus_b`` are grouped by co-occurrence into clusters with
    ``min_similarity`` (``describe_corpus``; 0: skipped)."""

    kind: Literal["diff"]
    sae: str
    corpus_a: str = "wordnet"
    corpus_b: str = "fortunes"
    max_texts: PositiveInt = 500
    context_len: int = Field(default=64, ge=4)
    level: Literal["window", "token"] = "window"
    prior: float = Field(default=10.0, gt=0)
    holdout: float = Field(default=0.5, ge=0, lt=1)
    top: PositiveInt = 20
    explain: NonNegativeInt = 0
    describe: NonNegativeInt = 0
    min_similarity: float = Field(default=0.3, ge=0, le=1)
    hypotheses: list[str] = Field(default=[])
    baselines: list[str] = Field(default=[])
    n_texts: PositiveInt = 30
    explainer: ChatEndpoint = ChatEndpoint()
    scorer: ChatEndpoint = ChatEndpoint()
    seed: int = 0

    @model_validator(mode="after")
    def _explain_more_than_one(self) -> DiffStep:
        if self.explain == 1:
            raise ValueError(
                "explain: 1 leaves the explanation without a shuffled baseline; use 0 or at least 2"
            )
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
    | SAEStep
    | AttributionGraphStep
    | DiffStep,
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
