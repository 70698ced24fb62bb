"""Patching sweeps on SmolLM2-135M: TransformerLens vs mechinterp, timed in one process.

    .venv/bin/python benchmarks/bench_patching.py [--device cpu|cuda] [--pattern-layers 3]

IOI pair "When Mary and John went to the store, John gave a drink to" (clean) / "..., Mary
gave a drink to" (corrupt), metric logit(" Mary") - logit(" John") at the last position,
fp32. Contestants:

- ``TL on bridge``: ``transformer_lens.patching`` 4.3 on ``TransformerBridge`` (what users run today);
- ``TL on HookedLM``: the same TL functions on our native model;
- ``nnsight``: nnsight 0.8 on the HF model, its fastest documented way: one trace per
  layer with one invoke per patch, so each layer's patches run as one batched forward;
- ``drop-in``: ``mechinterp.patching.tl_compat`` (same call, metric sees full logits);
- ``engine``: ``patch_sweep`` with the positional ``LogitDifference`` metric.

The by-position head sweep runs TL and nnsight on the first ``--pattern-layers`` layers only
and scales their time to all layers (marked ``*``). nnsight is optional
(``pip install -e ".[bench]"``); without it its rows are skipped. Peak memory is the rise of the process's resident
memory during the run (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

import torch
from transformer_lens import patching as tl_patching
from transformer_lens.model_bridge import TransformerBridge

import mechinterp
from mechinterp.metrics import LogitDifference
from mechinterp.patching import SweepSpec, patch_sweep, tl_compat

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


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

    mary, john = answer
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
                        values.append(logits[0, -1, mary] - logits[0, -1, john])
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
    args = parser.parse_args()
    device = args.device

    model = mechinterp.load_model("smollm2-135m", device=device)
    hf_model, tokenizer = mechinterp.load_hf("smollm2-135m")
    bridge = TransformerBridge.boot_transformers(
        "smollm2", hf_model=hf_model.to(device), tokenizer=tokenizer, device=device
    )
    clean, corrupt = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    try:
        from nnsight import TransformersModel

        nnsight_model = TransformersModel(hf_model, tokenizer=tokenizer, dispatch=True)
    except ImportError:
        nnsight_model = None
    positional = LogitDifference.last_position(torch.ones_like(clean), correct=[mary], incorrect=[john])

    def metric(logits):
        return logits[0, -1, mary] - logits[0, -1, john]

    with torch.no_grad():
        _, native_cache = model.run_with_cache(clean)
        _, bridge_cache = bridge.run_with_cache(clean)
    n_layers = model.cfg.n_layers
    subset = args.pattern_layers
    sweeps = [
        ("resid_pre [layer, pos]", "get_act_patch_resid_pre", SweepSpec(kind="resid_pre"), None),
        (
            "head out, all pos [layer, head]",
            "get_act_patch_attn_head_out_all_pos",
            SweepSpec(kind="z", per_position=False),
            None,
        ),
        (
            "head out by pos [layer, pos, head]",
            "get_act_patch_attn_head_out_by_pos",
            SweepSpec(kind="z"),
            subset,
        ),
    ]
    name = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {name}; SmolLM2-135M fp32; {clean.shape[1]} tokens; torch {torch.__version__}")
    header = f"{'sweep':36}{'contestant':16}{'seconds':>10}{'speed-up':>10}{'max |diff|':>12}{'peak MiB':>10}"
    print(header)
    print("-" * len(header))
    for title, tl_name, spec, layers in sweeps:
        scale = 1.0
        if layers is None:
            tl_runs = {
                "TL on bridge": lambda tl_name=tl_name: getattr(tl_patching, tl_name)(
                    bridge, corrupt, bridge_cache, metric
                ),
                "TL on HookedLM": lambda tl_name=tl_name: getattr(tl_patching, tl_name)(
                    model, corrupt, native_cache, metric
                ),
            }
        else:  # TL and nnsight run the first `layers` layers; their time is scaled to all layers
            scale = n_layers / layers
            grid = tl_patching.make_df_from_ranges(
                [layers, clean.shape[1], model.cfg.n_heads], ["layer", "pos", "head"]
            )
            tl_runs = {
                "TL on bridge*": lambda tl_name=tl_name, grid=grid: getattr(tl_patching, tl_name)(
                    bridge, corrupt, bridge_cache, metric, index_axis_names=None, index_df=grid
                ),
                "TL on HookedLM*": lambda tl_name=tl_name, grid=grid: getattr(tl_patching, tl_name)(
                    model, corrupt, native_cache, metric, index_axis_names=None, index_df=grid
                ),
            }
        if nnsight_model is not None:
            tl_runs["nnsight*" if layers else "nnsight"] = lambda spec=spec, layers=layers: nnsight_sweep(
                nnsight_model,
                spec.kind,
                clean,
                corrupt,
                (mary, john),
                n_layers=layers or n_layers,
                n_heads=model.cfg.n_heads,
                per_position=spec.per_position,
            )
        ours = {
            "drop-in": lambda tl_name=tl_name: getattr(tl_compat, tl_name)(
                model, corrupt, native_cache, metric
            ),
            "engine": lambda spec=spec: patch_sweep(
                model, clean, corrupt, spec, positional, progress=False
            ).mean(),
        }
        results = {label: timed(device, run) for label, run in {**tl_runs, **ours}.items()}
        reference_label = next(iter(results))
        reference_seconds = results[reference_label][0] * scale
        reference_values = results[reference_label][1].reshape(-1)
        for label, (seconds, values, peak) in results.items():
            full_seconds = seconds * (scale if label.endswith("*") else 1.0)
            compared = values.reshape(-1)[: reference_values.numel()]
            diff = (compared - reference_values).abs().max().item()
            print(
                f"{title:36}{label:16}{full_seconds:10.2f}{reference_seconds / full_seconds:9.1f}x"
                f"{diff:12.1e}{peak / 2**20:10.0f}"
            )
        title = ""
    print(f"* timed on the first {subset} layers and scaled to {n_layers} (values compared on those layers)")


if __name__ == "__main__":
    main()
