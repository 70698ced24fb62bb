"""TopK SAE on SmolLM2-135M's middle residual stream: quality vs tokens, and the bars.

    .venv/bin/python benchmarks/bench_sae.py [--samples 300000] [--d-sae 4608] [--k 32]
                                              [--layer 15] [--out runs/bench_sae]
    .venv/bin/python benchmarks/bench_sae.py --tiny      # proves it runs, in about a minute

Trains a TopK SAE (AuxK, unit-norm decoder) on ``blocks.{layer}.hook_resid_post`` from the
default offline corpus's training split (WordNet glosses + standard-library docstrings),
then evaluates it on the test split, a different source (Debian fortunes): explained
variance, L0, dead latents and CE loss recovered (spliced without the error term vs clean vs
zero-ablated). Bars (issue 14): EV >= 0.7 at L0 <= 64 and CE recovered >= 0.8 within 20
minutes on a 2-core CPU. Prints the training curve (samples, reconstruction MSE on the
scaled data, L0) every ``--curve-every`` steps, wall-clock time and tokens/s, and writes
``result.json`` and the SAE (``load_sae`` reads it) to ``--out``.

Cost: collecting a token runs 16 of SmolLM2's 30 blocks, about 0.11 GFLOP, so 300k training
tokens are about 35 TFLOP of forwards plus the SAE steps; that is what fits 20 minutes on 2
CPU cores (more tokens improve the SAE: pass ``--samples`` on a faster machine or a GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import mechinterp
from mechinterp.data.corpus import load_corpus
from mechinterp.sae import ActivationStream, TrainingConfig, evaluate_sae, train_sae


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=300_000, help="training tokens")
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--train-texts", type=int, default=12000)
    parser.add_argument("--eval-texts", type=int, default=200)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--curve-every", type=int, default=50)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: proves the script runs")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_sae"))
    args = parser.parse_args()
    if args.tiny:
        args.samples, args.d_sae, args.batch_size = 8192, 256, 512
        args.train_texts, args.eval_texts, args.context, args.curve_every = 200, 8, 48, 4

    model = mechinterp.load_model("smollm2-135m")
    hook = f"blocks.{args.layer}.hook_resid_post"
    train_texts = load_corpus("default", "train", max_texts=args.train_texts)
    test_texts = load_corpus("default", "test", max_texts=args.eval_texts)
    stream = ActivationStream(
        model, train_texts, hook, context=args.context, buffer_tokens=max(16 * args.batch_size, 16384)
    )
    curve = []

    def record(info) -> None:
        if info.step % args.curve_every == 0:
            curve.append(
                {"samples": info.samples, "mse": info.mse, "l0": info.l0, "dead": info.dead_fraction}
            )
            print(
                f"  {info.samples:>9} tokens  mse {info.mse:.4f}  L0 {info.l0:5.1f}  dead {info.dead_fraction:.1%}"
            )

    training = TrainingConfig(samples=args.samples, batch_size=args.batch_size)
    print(
        f"training a TopK SAE (d_sae={args.d_sae}, k={args.k}) on {hook} of {model.architecture.model_name}"
    )
    start = time.perf_counter()
    sae = train_sae(stream, d_sae=args.d_sae, k=args.k, training=training, callback=record, progress=False)
    train_seconds = time.perf_counter() - start
    result = evaluate_sae(model, sae, test_texts, context=args.context)
    total_seconds = time.perf_counter() - start
    summary = result.summary() | {
        "train_seconds": train_seconds,
        "total_seconds": total_seconds,
        "tokens_per_second": args.samples / train_seconds,
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "curve": curve,
    }
    bars = {
        "explained variance >= 0.7": result.explained_variance >= 0.7,
        "L0 <= 64": result.l0 <= 64,
        "CE recovered >= 0.8": result.ce_recovered >= 0.8,
        "<= 20 minutes": total_seconds <= 1200,
    }
    summary["bars"] = bars
    args.out.mkdir(parents=True, exist_ok=True)
    sae.save(args.out / "sae")
    (args.out / "result.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nheld-out ({result.n_tokens} tokens of fortunes): explained variance {result.explained_variance:.3f}, "
        f"L0 {result.l0:.1f}, dead {result.dead_fraction:.1%}, CE clean {result.ce_clean:.3f} / "
        f"spliced {result.ce_spliced:.3f} / zero-ablated {result.ce_zero_ablated:.3f} "
        f"-> recovered {result.ce_recovered:.3f}"
    )
    print(
        f"training {train_seconds:.0f}s ({args.samples / train_seconds:.0f} tokens/s), total {total_seconds:.0f}s"
    )
    for bar, passed in bars.items():
        print(f"  {'PASS' if passed else 'FAIL'}  {bar}")
    print(f"wrote {args.out / 'result.json'} and {args.out / 'sae'}")


if __name__ == "__main__":
    main()
