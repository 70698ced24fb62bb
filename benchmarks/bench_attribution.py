"""Attribution and path patching on SmolLM2-135M with IOI prompt pairs: accuracy and speed.

    .venv/bin/python benchmarks/bench_attribution.py [--out runs/attribution] [--device cpu]

1. Attention heads, all positions (head outputs z, queries, keys, values): AtP and AtP*
   against exact patching, as Pearson / Spearman correlations of the per-head effects and
   the overlap of the 10 heads with the largest effects. Figures (exact map, AtP map, their
   scatter) are written to ``--out`` as HTML.
2. AtP over every head x position, timed against one forward + backward pass on the same
   batch (gradients with respect to activations, as AtP needs).
3. A path-patching sweep over all 270 sender heads into one receiver set, batched vs the
   one-forward-per-sender reference.

Everything runs in one process; compare the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import mechinterp
from mechinterp.metrics import LogitDifference
from mechinterp.patching import (
    Receiver,
    SweepSpec,
    attribution_patch,
    compare,
    patch_sweep,
    path_patch,
    reference_path_patch,
)
from mechinterp.patching.compare import pearson, spearman
from mechinterp.plotting import comparison_scatter, patch_heatmap

NAMES = [("Mary", "John"), ("Tom", "James"), ("Anna", "David"), ("Sarah", "Michael")]
TEMPLATE = "When {a} and {b} went to the store, {c} gave a drink to"


def ioi_pairs(model):
    clean = [TEMPLATE.format(a=a, b=b, c=b) for a, b in NAMES]
    corrupt = [TEMPLATE.format(a=a, b=b, c=a) for a, b in NAMES]
    _, mask = model.encode(clean)
    metric = LogitDifference.from_answers(
        model, mask, correct=[" " + a for a, _ in NAMES], incorrect=[" " + b for _, b in NAMES], reduce="none"
    )
    return clean, corrupt, metric


def seconds(run) -> tuple[float, object]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/attribution"))
    args = parser.parse_args()
    model = mechinterp.load_model("smollm2-135m", device=args.device)
    clean, corrupt, metric = ioi_pairs(model)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"SmolLM2-135M, {len(NAMES)} IOI pairs, device {args.device}\n")

    print(f"{'heads, all positions':24}{'method':8}{'Pearson':>9}{'Spearman':>10}{'top-10':>8}")
    pooled = {"atp": ([], []), "atp*": ([], [])}
    for kind in ("z", "q", "k", "v"):
        spec = SweepSpec(kind=kind, per_position=False)
        exact = patch_sweep(model, clean, corrupt, spec, metric, progress=False)
        for method in ("atp", "atp*"):
            estimate = attribution_patch(model, clean, corrupt, metric, spec, method=method)
            comparison = compare(exact, estimate, names=("exact", method))
            pooled[method][0].append(comparison.reference)
            pooled[method][1].append(comparison.estimate)
            print(
                f"{kind:24}{method:8}{comparison.pearson:9.3f}{comparison.spearman:10.3f}"
                f"{comparison.top_k_overlap:8.0%}"
            )
            if kind == "z":
                patch_heatmap(estimate, title=f"{method} estimate: head outputs").write_html(
                    args.out / f"heads_{method}.html"
                )
                comparison_scatter(comparison).write_html(args.out / f"heads_exact_vs_{method}.html")
        if kind == "z":
            patch_heatmap(exact, title="exact patching: head outputs").write_html(
                args.out / "heads_exact.html"
            )
    for method, (reference, estimate) in pooled.items():
        a, b = torch.cat(reference), torch.cat(estimate)
        print(f"{'all four, pooled':24}{method:8}{pearson(a, b):9.3f}{spearman(a, b):10.3f}")

    tokens, mask = model.encode(corrupt)
    every_head = SweepSpec(kind="z")
    attribution_patch(model, clean, corrupt, metric, every_head)  # warm-up

    def forward_backward():
        def leaf(value, hook):
            return value.detach().requires_grad_(True)

        with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)]):
            logits = model(tokens, attention_mask=mask)
            metric.score(
                logits[torch.arange(len(NAMES)), metric.positions], torch.arange(len(NAMES))
            ).sum().backward()

    fb, _ = seconds(forward_backward)
    fb = min(fb, seconds(forward_backward)[0])
    atp_time, _ = seconds(lambda: attribution_patch(model, clean, corrupt, metric, every_head))
    print(
        f"\nAtP over all {model.cfg.n_layers}x{tokens.shape[1]}x{model.cfg.n_heads} head x position cells: "
        f"{atp_time:.2f}s = {atp_time / fb:.2f}x one forward+backward ({fb:.2f}s)"
    )

    senders = SweepSpec(kind="z", per_position=False)
    receivers = [Receiver("q", 20), Receiver("k", 20), Receiver("v", 20), Receiver("logits")]
    batched_time, batched = seconds(
        lambda: path_patch(model, clean, corrupt, senders, receivers, metric, progress=False)
    )
    cells = senders.enumerate(model, tokens.shape[1]).cells
    reference_time, reference = seconds(
        lambda: reference_path_patch(model, clean, corrupt, cells, receivers, metric)
    )
    diff = (batched.values.reshape(len(cells), -1) - reference).abs().max().item()
    print(
        f"path patching, {len(cells)} sender heads -> layer-20 q/k/v inputs + logits: batched {batched_time:.2f}s, "
        f"one forward per sender {reference_time:.2f}s, {reference_time / batched_time:.1f}x faster, "
        f"max |diff| {diff:.1e}"
    )
    print(f"\nfigures: {args.out}/heads_exact.html, heads_atp.html, heads_exact_vs_atp.html, ...")


if __name__ == "__main__":
    main()
