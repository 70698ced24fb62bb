"""Patching sweeps: TransformerLens vs nnsight vs mechinterp, timed in one process.

    .venv/bin/python benchmarks/bench_patching.py [--device cpu|cuda] [--pattern-layers 3]
        [--dtype float32|bfloat16|float16] [--tf32]
        [--random-weights --shape smollm2|1b [--layers N]] [--batch N] [--sweeps resid_pre,heads,heads_by_pos]

Default: the embedded SmolLM2-135M with the IOI pair "When Mary and John went to the store,
John gave a drink to" (clean) / "..., Mary gave a drink to" (corrupt), metric logit(" Mary")
- logit(" John") at the last position. ``--random-weights`` needs no checkpoint (for a GPU
machine without the 98 MB GGUF): a randomly initialised HF Llama with SmolLM2-135M's
config (``--shape smollm2``) or Llama-3.2-1B's block shape with SmolLM2's vocabulary
(``--shape 1b``), the same token ids, and a word-level stand-in tokenizer. ``--batch N``
runs N IOI-shaped pairs (the names of pairs after the first are random tokens), and the
metric is the mean logit difference. Contestants:

- ``TL on bridge``: ``transformer_lens.patching`` 4.3 on ``TransformerBridge`` (what users run today);
- ``TL on HookedLM``: the same TL functions on our native model;
- ``nnsight``: nnsight 0.8 on the HF model, its fastest documented way: one trace per
  layer with one invoke per patch, so each layer's patches run as one batched forward;
- ``drop-in``: ``mechinterp.patching.tl_compat`` (same call, metric sees full logits);
- ``engine``: ``patch_sweep`` with the positional ``LogitDifference`` metric.

The by-position head sweep runs TL and nnsight on the first ``--pattern-layers`` layers only
and scales their time to all layers (marked ``*``). nnsight is optional
(``pip install -e ".[bench]"``); without it its rows are skipped. Peak memory is the rise of the process's resident
memory during the run (CPU) or ``torch.cuda.max_memory_allocated`` (GPU). ``work ops``
counts the aten operations our contestants dispatch (``benchmarks/op_count.py``, an
untimed second run): on a GPU a sweep of a small model is bound by them, not by arithmetic.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformer_lens import patching as tl_patching
from transformer_lens.model_bridge import TransformerBridge

import mechinterp
from mechinterp.metrics import LogitDifference
from mechinterp.patching import SweepSpec, patch_sweep, tl_compat

sys.path.insert(0, str(Path(__file__).parent))
from op_count import count_work_ops

# SmolLM2's token ids of the IOI pair (so random-weight runs need no tokenizer files)
CLEAN_IDS = [1, 2427, 5099, 284, 2322, 3514, 288, 260, 4249, 28, 2322, 4502, 253, 5968, 288]
MARY, JOHN, S2_POSITION = 5099, 2322, 10

SMOLLM2_CONFIG = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
SHAPES = {
    "smollm2": SMOLLM2_CONFIG,
    "1b": {  # Llama-3.2-1B's blocks, SmolLM2's vocabulary
        **SMOLLM2_CONFIG,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
    },
}
SWEEPS = ("resid_pre", "heads", "heads_by_pos")


def stand_in_tokenizer(vocab_size: int):
    """A word-level tokenizer with ``vocab_size`` entries, saved and reloaded from disk
    (TransformerLens reloads tokenizers by path); inputs are passed as token ids anyway."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    directory = tempfile.mkdtemp(prefix="bench-tokenizer-")
    fast.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def random_hf_model(shape: str, layers: int | None, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(SHAPES[shape])
    if layers is not None:
        config["num_hidden_layers"] = layers
    torch.manual_seed(0)
    hf_model = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="eager")).to(dtype).eval()
    return hf_model, stand_in_tokenizer(config["vocab_size"])


def ioi_batch(batch: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(clean, corrupt, correct, incorrect)``: the IOI pair, then pairs with random names."""
    names = torch.randint(3000, vocab_size, (batch, 2), generator=torch.Generator().manual_seed(0))
    names[0] = torch.tensor([MARY, JOHN])
    clean = torch.tensor(CLEAN_IDS).repeat(batch, 1)
    clean[:, 2], clean[:, 4], clean[:, S2_POSITION] = names[:, 0], names[:, 1], names[:, 1]
    corrupt = clean.clone()
    corrupt[:, S2_POSITION] = names[:, 0]
    return clean, corrupt, names[:, 0], names[:, 1]


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or sampled resident set size."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start, self.running = resident_bytes(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, resident_bytes() - self.start)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()


def timed(device: str, run: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor, int]:
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        out = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, out.detach().cpu().float(), memory.peak


def nnsight_sweep(lm, kind: str, clean, corrupt, answer, *, n_layers: int, n_heads: int, per_position: bool):
    """Patch clean activations into the corrupt run with nnsight: one trace per layer, one
    invoke per cell. ``kind``: ``"resid_pre"`` (decoder-layer input) or ``"z"`` (the
    per-head slices of the attention output projection's input)."""
    import nnsight

    def site(layer):
        block = lm.model.layers[layer]
        return block.self_attn.o_proj if kind == "z" else block

    mary, john = answer  # [batch] answer ids
    rows = torch.arange(clean.shape[0])
    n_pos = clean.shape[1]
    with torch.no_grad(), lm.trace(clean):
        sources = nnsight.save(list())
        for layer in range(n_layers):
            sources.append(site(layer).input)
    d_head = sources[0].shape[-1] // n_heads
    if kind == "resid_pre":
        cells = [(pos, slice(None)) for pos in range(n_pos)]
    else:
        positions = list(range(n_pos)) if per_position else [slice(None)]
        cells = [(pos, slice(h * d_head, (h + 1) * d_head)) for pos in positions for h in range(n_heads)]
    results = []
    with torch.no_grad():
        for layer in range(n_layers):
            with lm.trace() as tracer:
                values = nnsight.save(list())
                for pos, columns in cells:
                    with tracer.invoke(corrupt):
                        site(layer).input[:, pos, columns] = sources[layer][:, pos, columns]
                        logits = lm.lm_head.output
                        values.append((logits[rows, -1, mary] - logits[rows, -1, john]).mean())
            results.append(torch.stack([torch.as_tensor(v) for v in values]))
    return torch.stack(results)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--pattern-layers", type=int, default=3, help="layers TL runs in the by-position sweep"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matrix products (CUDA, float32)")
    parser.add_argument("--random-weights", action="store_true", help="a random model: no checkpoint needed")
    parser.add_argument("--shape", default="smollm2", choices=sorted(SHAPES), help="with --random-weights")
    parser.add_argument("--layers", type=int, default=None, help="with --random-weights: fewer layers")
    parser.add_argument("--batch", type=int, default=1, help="IOI-shaped prompt pairs")
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated subset of {SWEEPS}")
    parser.add_argument(
        "--skip", default="", help="comma-separated contestants to leave out, e.g. 'TL on HookedLM'"
    )
    args = parser.parse_args()
    device, dtype = args.device, getattr(torch, args.dtype)
    if (args.shape != "smollm2" or args.layers is not None) and not args.random_weights:
        parser.error("--shape and --layers need --random-weights")
    unknown = set(args.sweeps.split(",")) - set(SWEEPS)
    if unknown:
        parser.error(f"unknown sweeps {sorted(unknown)}; choose from {SWEEPS}")

    if args.random_weights:
        hf_model, tokenizer = random_hf_model(args.shape, args.layers, dtype)
        label = f"random {args.shape} shape"
    else:
        hf_model, tokenizer = mechinterp.load_hf("smollm2-135m", dtype=dtype)
        label = "SmolLM2-135M"
    hf_model = hf_model.to(device)
    model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device=device, dtype=dtype)
    bridge = TransformerBridge.boot_transformers(
        "smollm2", hf_model=hf_model, tokenizer=tokenizer, device=device
    )
    clean, corrupt, correct, incorrect = ioi_batch(args.batch, model.cfg.d_vocab)
    clean, corrupt = clean.to(device), corrupt.to(device)
    try:
        from nnsight import TransformersModel

        nnsight_model = TransformersModel(hf_model, tokenizer=tokenizer, dispatch=True)
    except ImportError:
        nnsight_model = None
    positional = LogitDifference.last_position(torch.ones_like(clean), correct=correct, incorrect=incorrect)
    rows = torch.arange(args.batch, device=device)

    def metric(logits):
        return (logits[rows, -1, correct.to(device)] - logits[rows, -1, incorrect.to(device)]).mean()

    with torch.no_grad():
        _, native_cache = model.run_with_cache(clean)
        _, bridge_cache = bridge.run_with_cache(clean)
    n_layers = model.cfg.n_layers
    subset = min(args.pattern_layers, n_layers)
    sweeps = [
        ("resid_pre", "resid_pre [layer, pos]", "get_act_patch_resid_pre", SweepSpec(kind="resid_pre"), None),
        (
            "heads",
            "head out, all pos [layer, head]",
            "get_act_patch_attn_head_out_all_pos",
            SweepSpec(kind="z", per_position=False),
            None,
        ),
        (
            "heads_by_pos",
            "head out by pos [layer, pos, head]",
            "get_act_patch_attn_head_out_by_pos",
            SweepSpec(kind="z"),
            subset,
        ),
    ]
    chosen = args.sweeps.split(",")
    skipped = set(filter(None, args.skip.split(",")))
    name = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {name}; {label} ({n_layers} layers) {args.dtype}{' tf32' if args.tf32 else ''}; "
        f"{args.batch} pair(s) of {clean.shape[1]} tokens; torch {torch.__version__}"
    )
    header = (
        f"{'sweep':36}{'contestant':16}{'seconds':>10}{'speed-up':>10}{'max |diff|':>12}"
        f"{'peak MiB':>10}{'work ops':>10}"
    )
    print(header)
    print("-" * len(header))
    with mechinterp.tf32_matmuls(args.tf32):
        for key, title, tl_name, spec, layers in sweeps:
            if key not in chosen:
                continue
            runs = contestants(
                model,
                bridge,
                nnsight_model,
                tl_name,
                spec,
                layers,
                clean,
                corrupt,
                native_cache,
                bridge_cache,
                metric,
                positional,
                (correct, incorrect),
            )
            runs = {label: run for label, run in runs.items() if label.rstrip("*") not in skipped}
            scale = n_layers / layers if layers else 1.0
            results = {label: timed(device, run) for label, run in runs.items()}
            reference_label = next(iter(results))
            reference_seconds = results[reference_label][0] * (
                scale if reference_label.endswith("*") else 1.0
            )
            reference_values = results[reference_label][1].reshape(-1)
            for label, (seconds, values, peak) in results.items():
                full_seconds = seconds * (scale if label.endswith("*") else 1.0)
                compared = values.reshape(-1)[: reference_values.numel()]
                diff = (compared - reference_values).abs().max().item()
                ops = count_work_ops(runs[label]).total if label in ("drop-in", "engine") else None
                print(
                    f"{title:36}{label:16}{full_seconds:10.2f}{reference_seconds / full_seconds:9.1f}x"
                    f"{diff:12.1e}{peak / 2**20:10.0f}{'' if ops is None else f'{ops:,d}':>10}"
                )
                title = ""
    print(f"* timed on the first {subset} layers and scaled to {n_layers} (values compared on those layers)")


def contestants(
    model,
    bridge,
    nnsight_model,
    tl_name,
    spec,
    layers,
    clean,
    corrupt,
    native_cache,
    bridge_cache,
    metric,
    positional,
    answers,
) -> dict[str, Callable[[], torch.Tensor]]:
    """The runs of one sweep, TL first (the reference)."""
    if layers is None:
        runs = {
            "TL on bridge": lambda: getattr(tl_patching, tl_name)(bridge, corrupt, bridge_cache, metric),
            "TL on HookedLM": lambda: getattr(tl_patching, tl_name)(model, corrupt, native_cache, metric),
        }
    else:  # TL and nnsight run the first `layers` layers; their time is scaled to all layers
        grid = tl_patching.make_df_from_ranges(
            [layers, clean.shape[1], model.cfg.n_heads], ["layer", "pos", "head"]
        )
        runs = {
            "TL on bridge*": lambda: getattr(tl_patching, tl_name)(
                bridge, corrupt, bridge_cache, metric, index_axis_names=None, index_df=grid
            ),
            "TL on HookedLM*": lambda: getattr(tl_patching, tl_name)(
                model, corrupt, native_cache, metric, index_axis_names=None, index_df=grid
            ),
        }
    if nnsight_model is not None:
        runs["nnsight*" if layers else "nnsight"] = lambda: nnsight_sweep(
            nnsight_model,
            spec.kind,
            clean,
            corrupt,
            answers,
            n_layers=layers or model.cfg.n_layers,
            n_heads=model.cfg.n_heads,
            per_position=spec.per_position,
        )
    runs["drop-in"] = lambda: getattr(tl_compat, tl_name)(model, corrupt, native_cache, metric)
    runs["engine"] = lambda: patch_sweep(model, clean, corrupt, spec, positional, progress=False).mean()
    return runs


if __name__ == "__main__":
    main()
