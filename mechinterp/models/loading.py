"""``load_model``: any source -> native ``HookedLM`` with the checkpoint's weights (the final norm
folded into the unembedding by default, see ``processing.py``)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechinterp.models import hf_sources, processing
from mechinterp.models.embedded import EMBEDDED_MODELS, embedded_model_dir
from mechinterp.models.families import family_for
from mechinterp.models.hooked_lm import HookedLM
from mechinterp.models.placement import DeviceMap
from mechinterp.models.toy import TOY_MODELS

ModelSource = str | Path | Any  # a name, a path, or a transformers PreTrainedModel


@dataclass(frozen=True, kw_only=True)
class WeightProcessing:
    """Which of TransformerLens' weight rewrites ``load_model`` applies (``processing.py``).

    All keep the logits (``center_unembed``: the probabilities) unchanged; they run in
    float32, before the model is cast to its dtype.
    """

    fold_final_norm: bool = True
    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False

    def apply(self, model: HookedLM) -> None:
        if self.fold_ln:
            processing.fold_layer_norm(model)
        elif self.fold_final_norm:
            processing.fold_final_norm(model)
        if self.center_writing_weights:
            processing.center_writing_weights(model)
        if self.center_unembed:
            processing.center_unembed(model)


def load_model(
    source: ModelSource,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    tokenizer: Any | None = None,
    fold_final_norm: bool = True,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    device_map: DeviceMap | None = None,
) -> HookedLM:
    """Load a causal LM as a native hooked model.

    Args:
        source: ``"smollm2-135m"`` (embedded, offline), ``"toy-induction-2l"`` (trained on
            first use, see ``mechinterp.models.toy``), a Hugging Face hub id, a local HF
            model directory, a ``.gguf`` file, or an already loaded HF ``PreTrainedModel``
            (pass its ``tokenizer`` too).
        dtype: parameter dtype (``torch.float32`` default; ``"bfloat16"`` etc. accepted).
        device: where to put the model; default CUDA when available, else CPU.
        tokenizer: the tokenizer for an HF model object; for a local folder or hub id it
            replaces the source's own (needed for a folder saved without tokenizer files,
            which otherwise loads with ``model.tokenizer is None`` and a warning).
        fold_final_norm: move the final norm's scale (and LayerNorm bias) into ``W_U``
            (and ``b_U``), so ``ln_final.w`` is all ones. On by default: TransformerLens'
            logit attribution (``cache.logit_attrs``, ``apply_ln_to_stack``,
            ``decompose_resid(apply_ln=True)``, ``direct_logit_attribution``) assumes it.
            Turn off to keep ``W_U`` equal to the checkpoint's ``lm_head``.
        fold_ln: TransformerLens' ``fold_ln``: also fold every block's norms into the
            weights that read them (implies ``fold_final_norm``).
        center_writing_weights: TL's option: remove the ``d_model`` mean from weights that
            write to the residual stream (LayerNorm models only).
        center_unembed: TL's option: remove the vocabulary mean from ``W_U`` and ``b_U``
            (logits shift by a constant per position; probabilities are unchanged).
        device_map: spread the blocks over devices, for models larger than one device:
            ``"auto"`` (balanced over every GPU) or ``{block_index: device}``; see
            ``HookedLM.place``. Exclusive with ``device``. The model is built on the CPU
            first, so the CPU must hold it once.

    Example:
        >>> model = load_model("smollm2-135m")
        >>> model.to_str_tokens("Hello world")
        ['<|im_start|>', 'Hello', ' world']
    """
    dtype = _check_dtype(dtype)
    if device_map is not None:
        if device is not None:
            raise ValueError("pass device or device_map, not both (device_map names every block's device)")
        if not isinstance(device_map, str):
            device_map = {block: _check_device(d) for block, d in dict(device_map).items()}
        model = load_model(
            source,
            dtype=dtype,
            device="cpu",
            tokenizer=tokenizer,
            fold_final_norm=fold_final_norm,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
        )
        return model.place(device_map)
    device = _check_device(device)
    process = WeightProcessing(
        fold_final_norm=fold_final_norm,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
    )
    if not _is_location(source):
        return from_hf_model(source, tokenizer, dtype=dtype, device=device, weight_processing=process)
    if str(source) in TOY_MODELS:
        model = TOY_MODELS[str(source)]()
        process.apply(model)
        return model.to(device=device, dtype=dtype)
    hf_model, hf_tokenizer = load_hf(source, dtype=dtype, load_tokenizer=tokenizer is None)
    hf_tokenizer = tokenizer if tokenizer is not None else hf_tokenizer
    return from_hf_model(
        hf_model, hf_tokenizer, dtype=dtype, device=device, model_name=str(source), weight_processing=process
    )


def load_hf(
    source: str | Path, *, dtype: torch.dtype = torch.float32, load_tokenizer: bool = True
) -> tuple[Any, Any]:
    """The Hugging Face ``(model, tokenizer)`` behind a source, in eager attention: the
    reference that parity checks compare a ``HookedLM`` against. The tokenizer is ``None``
    with ``load_tokenizer=False`` and for a local folder without tokenizer files (warned)."""
    if str(source) in TOY_MODELS:
        raise ValueError(f"{source!r} is a native toy model with no Hugging Face counterpart; use load_model")
    if str(source) in EMBEDDED_MODELS:
        return hf_sources.from_pretrained(
            embedded_model_dir(str(source)), dtype, load_tokenizer=load_tokenizer
        )
    path = Path(source)
    if path.is_file():
        return hf_sources.from_gguf(path, dtype)
    if path.is_dir():
        return hf_sources.from_pretrained(path, dtype, load_tokenizer=load_tokenizer)
    if path.suffix == ".gguf":
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    try:
        return hf_sources.from_pretrained(str(source), dtype, load_tokenizer=load_tokenizer)
    except OSError as error:
        raise ModelSourceError(_not_found_message(str(source), error)) from error


class ModelSourceError(OSError):
    """A source that is no embedded model, no local path, and that the hub did not provide."""


def _not_found_message(source: str, error: OSError) -> str:
    named = [*EMBEDDED_MODELS, *TOY_MODELS]
    close = difflib.get_close_matches(source, named, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    unreachable = "connect" in reason.lower() or "offline" in reason.lower()
    hub = (
        "the Hugging Face hub cannot be reached from here to download it"
        if unreachable
        else "the Hugging Face hub did not provide it"
    )
    return (
        f"cannot load {source!r}: it is not a model that loads offline by name{hint} "
        f"(those are: {', '.join(named)}), not a local path (no such file or folder), and {hub} "
        f"({reason}). Pass a local HF folder or .gguf file, or load it once where the hub is reachable."
    )


def from_hf_model(
    hf_model: Any,
    tokenizer: Any | None,
    *,
    dtype: torch.dtype,
    device: torch.device,
    model_name: str | None = None,
    weight_processing: WeightProcessing = WeightProcessing(),
) -> HookedLM:
    """Convert a loaded HF causal LM (any supported family) to a ``HookedLM``, then apply
    ``weight_processing`` (by default: the final norm folded into the unembedding)."""
    config = hf_model.config
    family = family_for(config.model_type)
    name = model_name or getattr(config, "name_or_path", "") or config.model_type
    model = HookedLM(family.architecture(config, model_name=name), tokenizer)
    hf_tensors = dict(hf_model.named_parameters(remove_duplicate=False))
    state = model.state_dict()
    for rule in family.weights:
        layers = range(model.architecture.n_layers) if "{l}" in rule.ours else [None]
        for layer in layers:
            candidates = [rule.hf] if isinstance(rule.hf, str) else list(rule.hf)
            present = [n.format(l=layer) for n in candidates if n.format(l=layer) in hf_tensors]
            if not present:
                if rule.optional:
                    continue
                raise KeyError(f"{family.name} checkpoint lacks {candidates} (needed for {rule.ours})")
            hf_name = present[0]
            ours = rule.ours.format(l=layer)
            converted = rule.convert(hf_tensors[hf_name].detach(), model.architecture)
            if converted.shape != state[ours].shape:
                raise ValueError(
                    f"{hf_name} converts to {tuple(converted.shape)}, {ours} needs {tuple(state[ours].shape)}"
                )
            state[ours] = converted
    model.load_state_dict(state)
    if model.rotary is not None:
        _copy_rotary(hf_model, model)
    weight_processing.apply(model)
    return model.to(device=device, dtype=dtype).eval()


def _copy_rotary(hf_model: Any, model: HookedLM) -> None:
    """Take the checkpoint's own RoPE frequencies (covers Llama-3, YaRN, longrope and other
    scalings); Gemma 3 keeps one set per layer type (``full_attention_inv_freq``, ...)."""
    rotary = model.rotary
    for module in hf_model.modules():
        if hasattr(module, "inv_freq"):
            rotary.inv_freq = module.inv_freq.detach().float().clone()
            rotary.attention_scaling = float(getattr(module, "attention_scaling", 1.0))
            return
        if hasattr(module, "full_attention_inv_freq"):
            rotary.inv_freq = module.full_attention_inv_freq.detach().float().clone()
            rotary.attention_scaling = float(module.full_attention_attention_scaling)
            if rotary.inv_freq_local is not None:
                rotary.inv_freq_local = module.sliding_attention_inv_freq.detach().float().clone()
                rotary.attention_scaling_local = float(module.sliding_attention_attention_scaling)
            return


def _is_location(source: Any) -> bool:
    return isinstance(source, (str, Path))


def _check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16'")
        dtype = resolved
    if not dtype.is_floating_point:
        raise ValueError(f"model dtype must be a floating-point type, got {dtype}")
    return dtype


def _check_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available here; use device='cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available here")
    return device
