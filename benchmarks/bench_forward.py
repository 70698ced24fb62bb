"""Forward-pass time of the native HookedLM vs TransformerBridge vs plain HF, in one process.

    .venv/bin/python benchmarks/bench_forward.py [--repeats 30] [--device cpu]

SmolLM2-135M-Instruct, fp32, the 14-token IOI prompt (no BOS). Runs are interleaved and the
median is reported, so machine noise hits every contestant alike; compare the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformer_lens.model_bridge import TransformerBridge

import mechinterp

PROMPT = "When Mary and John went to the store, John gave a drink to"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    native = mechinterp.load_model("smollm2-135m", device=args.device)
    hf_model, tokenizer = mechinterp.load_hf("smollm2-135m")
    hf_model = hf_model.to(args.device)
    bridge = TransformerBridge.boot_transformers(
        "smollm2", hf_model=hf_model, tokenizer=tokenizer, device=args.device
    )
    tokens = native.to_tokens(PROMPT, prepend_bos=False)
    contestants = {
        "HookedLM forward": lambda: native(tokens),
        "TransformerBridge forward": lambda: bridge(tokens),
        "HF forward (eager attention)": lambda: hf_model(tokens).logits,
        "HookedLM run_with_cache": lambda: native.run_with_cache(tokens),
        "TransformerBridge run_with_cache": lambda: bridge.run_with_cache(tokens),
    }
    times: dict[str, list[float]] = {name: [] for name in contestants}
    with torch.no_grad():
        for run in contestants.values():  # warm-up
            run()
        for _ in range(args.repeats):
            for name, run in contestants.items():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        max_diff = (native(tokens) - bridge(tokens)).abs().max().item()

    name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {name}; {tokens.shape[1]} tokens; median of {args.repeats}; max |logit diff| {max_diff:.1e}"
    )
    print(f"{'':34}{'ms':>9}{'vs HookedLM':>13}")
    base = {
        "forward": statistics.median(times["HookedLM forward"]),
        "run_with_cache": statistics.median(times["HookedLM run_with_cache"]),
    }
    for label, samples in times.items():
        median = statistics.median(samples)
        reference = base["run_with_cache" if "cache" in label else "forward"]
        print(f"{label:34}{median * 1e3:9.1f}{median / reference:12.2f}x")


if __name__ == "__main__":
    main()
