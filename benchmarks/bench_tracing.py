"""Attribution-graph tracing at long context: time and peak memory per prompt length.

    .venv/bin/python benchmarks/bench_tracing.py [--tokens 64 256 1024 2048] [--width 256]
        [--k 4] [--sample-batches 2] [--device cpu|cuda] [--shape smollm2|1b]

Each prompt length runs in its own subprocess (so peaks do not carry over): load the model
(SmolLM2-135M, or ``--shape 1b``: a randomly initialised Llama-3.2-1B-like model), build
random cross-layer transcoders (``random_transcoders``, TopK with ``k`` features per layer and
position, so ``n_layers * tokens * k`` features are active), and trace a random prompt of that
many tokens. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the trace; on the
CPU the peak resident set size above the level before the trace (sampled every 20 ms).

Every active feature is a target of the trace (or the ``--max-feature-nodes`` most influential),
so the trace costs ``(targets + logits) / batch`` backward passes of one retained forward.
``--sample-batches K`` times the replacement build (one forward of the model and one of the frozen
replacement) and ``K`` backward batches only, spread over the layers, and extrapolates the full
time linearly in the batch count (marked ``*`` in the table); ``--sample-batches 0`` runs the
whole ``trace``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import psutil
import torch

import mechinterp
from circuits.tracing import Replacement, random_transcoders, trace
from circuits.tracing.trace import FrozenBackward, select_logits


def build_model(shape: str, device: str):
    if shape == "smollm2":
        return mechinterp.load_model("smollm2-135m", device=device)
    import transformers

    config = transformers.LlamaConfig(  # Llama-3.2-1B's shape, random weights
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    hf_model = transformers.AutoModelForCausalLM.from_config(config).eval()
    return mechinterp.load_model(hf_model, device=device)


class PeakRSS:
    """The peak resident set size of this process while the ``with`` block runs (sampled)."""

    def __enter__(self) -> PeakRSS:
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def measure(args: argparse.Namespace, n_tokens: int) -> dict:
    """One prompt length, in this process."""
    model = build_model(args.shape, args.device)
    arch = model.architecture
    tc = random_transcoders(model, args.width, kind="clt", activation="topk", k=args.k, seed=0)
    tokens = torch.randint(arch.d_vocab, (1, n_tokens), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(model.device)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    with PeakRSS() as rss:
        start = time.perf_counter()
        if args.sample_batches:
            rep = Replacement(model, tc, tokens)
            logit_tokens, _ = select_logits(rep.clean_logits[-1], 10, 0.95)
            backward = FrozenBackward(rep, logit_tokens)
            n_features = len(rep.active)
            n_targets = min(n_features, args.max_feature_nodes or n_features) + logit_tokens.shape[0]
            built = time.perf_counter()
            firsts = torch.linspace(0, max(n_features - args.batch, 0), args.sample_batches).long().tolist()
            for first in firsts:  # spread over the layers: a deeper target's backward costs more
                targets = torch.arange(first, first + args.batch, device=model.device)
                backward.direct_effects(targets % (n_features + logit_tokens.shape[0]))
            if cuda:
                torch.cuda.synchronize()
            per_batch = (time.perf_counter() - built) / args.sample_batches
            n_batches = -(-n_targets // args.batch)
            seconds = built - start + per_batch * n_batches
            features, edges = len(rep.active), None
        else:
            graph = trace(
                model,
                tc,
                tokens,
                batch_size=args.batch,
                max_feature_nodes=args.max_feature_nodes,
                progress=False,
            )
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            features, edges = graph.n_features, graph.edges._nnz()
            n_batches, per_batch = graph.info["chunks"], None
    peak = torch.cuda.max_memory_allocated() - start_bytes if cuda else rss.peak - rss.base
    return {
        "tokens": n_tokens,
        "features": features,
        "edges": edges,
        "batches": n_batches,
        "seconds_per_batch": per_batch,
        "seconds": seconds,
        "extrapolated": bool(args.sample_batches),
        "peak_mib": peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 256, 1024, 2048])
    parser.add_argument("--width", type=int, default=256, help="transcoder features per layer")
    parser.add_argument("--k", type=int, default=4, help="active features per layer and position (TopK)")
    parser.add_argument("--batch", type=int, default=16, help="targets per backward pass")
    parser.add_argument(
        "--sample-batches", type=int, default=0, help="time K batches and extrapolate (0: full)"
    )
    parser.add_argument(
        "--max-feature-nodes", type=int, default=None, help="trace only this many features (default: all)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=["smollm2", "1b"], default="smollm2")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args, args.child)))
        return
    limit = "all" if args.max_feature_nodes is None else args.max_feature_nodes
    print(
        f"{args.shape} on {args.device}, CLT width {args.width}, top-{args.k}, {args.batch} targets per backward, "
        f"features traced: {limit}"
    )
    print("| tokens | active features | backward batches | s / batch | total s | peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.tokens:
        command = [sys.executable, __file__, *sys.argv[1:], "--child", str(n)]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode:
            print(f"| {n} | failed: {out.stderr.strip().splitlines()[-1]} |||||", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per_batch = r["seconds_per_batch"] or r["seconds"] / r["batches"]
        star = "*" if r["extrapolated"] else ""
        print(
            f"| {n} | {r['features']} | {r['batches']} | {per_batch:.2f} | {r['seconds']:.0f}{star} "
            f"| {r['peak_mib']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
