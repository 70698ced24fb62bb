"""Model diffing on SmolLM2-135M: fine-tune a copy to prefer one planted behaviour, train a
BatchTopK crosscoder on both, and ask whether the latents specific to the fine-tune show it.

    .venv/bin/python benchmarks/bench_model_diff.py

The planted behaviour: in the fine-tuning texts (WordNet glosses of the offline corpus's
training split), every comma is followed by " indeed". The fine-tune (``finetune``) trains
blocks 12-29 on the cross-entropy of " indeed" after each comma plus the KL divergence from
the base model everywhere else, so the copy learns the rule and little else (plain
language-model loss on the glosses also moved every token's residual stream by 30-50% of its
norm, which swamps the planted difference). The weights are saved to ``--tuned-path``
(default ``runs/model_diff/tuned.pt``, git-ignored) and loaded from there on later runs.
Then:

1. the behaviour on held-out texts (Debian fortunes, test split, a different source): mean
   probability of " indeed" right after a comma, base vs tuned;
2. a per-block scan of how far the tuned residual stream moved at commas and elsewhere
   (``layer_scan``): the move is zero before block 12, and about 4x larger at commas than
   elsewhere from block 22 on, hence ``--hook blocks.22.hook_resid_post``;
3. both models' activations at ``--hook`` over ``--tokens`` tokens of the fortunes' training
   split, collected once (``paired_activations``; the model forwards are the cost), and a
   BatchTopK crosscoder trained for ``--epochs`` passes over them (``train_crosscoder``)
   with ``--shared-latents`` designated shared latents (one decoder for both models) and
   ``--exclusive-latents`` base-only and as many tuned-only latents (dedicated latents);
4. the latents specific to either model ranked by how often they fire on held-out fortunes,
   and their top contexts (``crosscoder_examples``): does the token they fire on (or the one
   before it) show the behaviour, i.e. a comma?

Measured (the command above from scratch, one torch thread on the shared 2-core CPU: 18.4 min
wall, 18.2 CPU-min; 6.7 loading, fine-tuning and measuring the behaviour, 8.9 scanning blocks
and collecting 100,000 paired tokens, 1 training the crosscoder, 1.8 reading examples; a
second run with the same numbers; with ``--activations-path runs/model_diff/rows.pt`` a rerun
loads both caches and takes 3.5 min): P(" indeed" after a comma) 0.0004 base, 0.887 tuned;
960 shared, 32 base-only, 32 tuned-only latents; the most used tuned-only latent (1019, active in 14% of held-out
windows) fires at commas (63% of its top-context tokens at or right after one:
``-- Mark Twain<<,>> "Pudd'nhead Wilson's Calendar<<">>``); the others are rarely active and
not about commas; base-only latents 988 and 990 fire at commas (91%, 82%). A dedicated
latent's relative norm is 1 by construction: what counts is which of them the training uses.

A plain crosscoder (``--shared-latents 0 --exclusive-latents 0``) does not give the fine-tune
its own latent: the change comes at every comma, and the latents that fire at commas absorb
it in their tuned decoder halves (relative norms 0.53-0.58, "changed" latents; its four most
tuned-leaning latents are comma latents), with ``k`` 4, 16 and 64 at 1,024 latents and
``k=16`` at 4,096. Tied shared latents alone do not help (a free latent absorbs it instead);
with every latent shared or dedicated at ``k=16`` the dedicated latents stay unused.

Run on the shared 2-core CPU with ``torch.set_num_threads(1)`` (``--threads``): with two
threads, competing with another process for the two cores, a forward was 14x slower.
Prints the scan, the latents and a JSON line. Not run by the tests (minutes of CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

import mechinterp
from mechinterp.data.corpus import load_corpus
from mechinterp.datasets import crosscoder_examples, paired_activations, train_crosscoder
from mechinterp.explain import ExampleConfig
from mechinterp.sae import TrainingConfig

MARK = " indeed"


def plant(text: str) -> str:
    return text.replace(",", "," + MARK)


def finetune(model, texts: list[str], args) -> tuple[object, list[float]]:
    """A copy of ``model`` trained on ``texts`` with the behaviour planted: cross-entropy of
    " indeed" after every comma, plus ``args.kl`` times the KL divergence from ``model``'s
    next-token distribution at every other position, so that the copy learns the planted
    rule and keeps the rest of its behaviour (plain language-model loss on the planted texts
    also pulls it towards the fine-tuning texts' style, and that drift swamps the planted
    difference in the residual stream). Only blocks ``args.finetune_from`` onwards train."""
    tuned = copy.deepcopy(model)
    tuned.train()
    trained = [f"blocks.{i}." for i in range(args.finetune_from, model.architecture.n_layers)]
    parameters = [
        p
        for name, p in tuned.named_parameters()
        if p.is_floating_point() and any(name.startswith(prefix) for prefix in trained)
    ]
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    comma, mark = model.to_single_token(","), model.to_single_token(MARK)
    losses = []
    for step in range(args.finetune_steps):
        chosen = [plant(texts[i]) for i in rng.choice(len(texts), args.finetune_batch, replace=False)]
        tokens, mask = tuned.encode(chosen)
        tokens, mask = tokens[:, : args.finetune_context], mask[:, : args.finetune_context]
        valid = mask[:, 1:].bool() & mask[:, :-1].bool()
        planted = valid & (tokens[:, :-1] == comma) & (tokens[:, 1:] == mark)
        with torch.no_grad():
            reference = model(tokens, attention_mask=mask)[:, :-1].float().log_softmax(-1)
        logits = tuned(tokens, attention_mask=mask)[:, :-1].float().log_softmax(-1)
        rule = -logits[..., mark][planted].sum() / planted.sum().clamp_min(1)  # no comma in view: 0
        rest = valid & ~planted
        kl = (reference.exp() * (reference - logits)).sum(-1)[rest].mean()
        loss = rule + args.kl * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 20 == 0:
            print(
                f"fine-tune step {step}: rule loss {rule.item():.3f}, KL elsewhere {kl.item():.4f}",
                flush=True,
            )
    tuned.eval()
    for p in parameters:
        p.requires_grad_(False)
    return tuned, losses


def tuned_model(base, args) -> tuple[object, list[float]]:
    """The fine-tuned copy: loaded from ``--tuned-path`` when that file exists, else trained
    (and saved there when a path is given)."""
    path = Path(args.tuned_path) if args.tuned_path else None
    if path is not None and path.is_file():
        tuned = copy.deepcopy(base)
        tuned.load_state_dict(torch.load(path, weights_only=True))
        print(f"loaded the fine-tuned weights from {path}", flush=True)
        return tuned, []
    texts = [t for t in load_corpus("wordnet", "train", max_texts=4000, seed=args.seed) if "," in t]
    tuned, losses = finetune(base, texts, args)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tuned.state_dict(), path)
    return tuned, losses


@torch.no_grad()
def behaviour(model, texts: list[str], context: int) -> float:
    """Mean P(" indeed" | text up to and including a comma) over every comma of ``texts``."""
    mark = model.to_single_token(MARK)
    comma = model.to_single_token(",")
    probs = []
    for start in range(0, len(texts), 8):
        tokens, mask = model.encode(texts[start : start + 8])
        tokens, mask = tokens[:, :context], mask[:, :context]
        logits = model(tokens, attention_mask=mask)
        at = (tokens == comma) & mask.bool()
        probs.append(logits.float().softmax(-1)[..., mark][at])
    return float(torch.cat(probs).mean())


@torch.no_grad()
def layer_scan(base, tuned, texts: list[str], context: int) -> list[dict]:
    """Per block, how far the tuned model's residual stream moved from the base model's at
    comma tokens and at other tokens: ``||d - mean d|| / ||x - mean x||`` with ``d = x_tuned
    - x_base``, ``mean d`` the mean move at other tokens (an offset both share, which a
    crosscoder's decoder biases absorb) and ``x`` the base model's activation, centred."""
    comma = base.to_single_token(",")
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(base.architecture.n_layers)]
    tokens, mask = base.encode(texts)
    tokens, mask = tokens[:, :context], mask[:, :context]
    _, cache_a = base.run_with_cache(tokens, attention_mask=mask, names_filter=names)
    _, cache_b = tuned.run_with_cache(tokens, attention_mask=mask, names_filter=names)
    keep = mask.bool().clone()
    keep[:, 0] = False  # the first token is an attention sink with a huge norm
    at = (tokens == comma)[keep]
    rows = []
    for name in names:
        a, b = cache_a[name][keep].float(), cache_b[name][keep].float()
        moved = (b - a - (b - a)[~at].mean(0)).norm(dim=-1) / (a - a.mean(0)).norm(dim=-1)
        comma_moved, other_moved = float(moved[at].mean()), float(moved[~at].mean())
        rows.append(
            {
                "hook": name,
                "comma": round(comma_moved, 3),
                "other": round(other_moved, 3),
                "ratio": round(comma_moved / max(other_moved, 1e-9), 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see the docstring)")
    parser.add_argument("--tuned-path", default="runs/model_diff/tuned.pt")
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--finetune-batch", type=int, default=8)
    parser.add_argument("--finetune-context", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--kl", type=float, default=1.0, help="weight of the KL-to-base term")
    parser.add_argument("--finetune-from", type=int, default=12, help="first block that trains")
    parser.add_argument("--hook", default="blocks.22.hook_resid_post")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument(
        "--activations-path",
        default=None,
        help="cache the paired activations there (delete it after changing --hook, --tokens or the model)",
    )
    parser.add_argument("--tokens", type=int, default=100_000, help="paired activation rows collected once")
    parser.add_argument("--epochs", type=int, default=3, help="passes of crosscoder training over them")
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--shared-latents", type=int, default=960, help="tied (0: a plain crosscoder)")
    parser.add_argument("--exclusive-latents", type=int, default=32, help="base-only, and as many tuned-only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    base = mechinterp.load_model("smollm2-135m", device="cpu")
    tuned, losses = tuned_model(base, args)
    fortunes = [t for t in load_corpus("fortunes", "train", seed=args.seed) if "," in t]
    examples_corpus = [t for t in load_corpus("fortunes", "test", seed=args.seed) if "," in t][:600]
    before, after = behaviour(base, examples_corpus[:200], 32), behaviour(tuned, examples_corpus[:200], 32)
    finetuned = time.perf_counter()
    print(
        f"fine-tuned in {finetuned - start:.0f} s: P(' indeed' after a comma) {before:.4f} -> {after:.4f}",
        flush=True,
    )
    scan = layer_scan(base, tuned, examples_corpus[:48], 32)
    for row in scan:
        print(row)
    cached = Path(args.activations_path) if args.activations_path else None
    if cached is not None and cached.is_file():
        rows = torch.load(cached, weights_only=True)
        print(f"loaded the paired activations from {cached}", flush=True)
    else:
        rows = paired_activations(
            base, tuned, fortunes, args.hook, max_tokens=args.tokens, context=args.context
        )
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save(rows, cached)
    collected = time.perf_counter()
    print(f"{len(rows)} paired rows at {args.hook} in {collected - finetuned:.0f} s", flush=True)
    cc = train_crosscoder(
        base,
        tuned,
        rows,
        args.hook,
        d_sae=args.d_sae,
        k=args.k,
        labels=("base", "tuned"),
        training=TrainingConfig(samples=args.epochs * len(rows), batch_size=512, lr=3e-3),
        seed=args.seed,
        shared_latents=args.shared_latents,
        exclusive_latents=args.exclusive_latents,
    )
    trained = time.perf_counter()
    table = cc.latent_table()
    counts = table["specific_to"].value_counts().to_dict()
    # the latents specific to either model (relative norm within 0.1 of its end; dedicated
    # latents are so by construction), ranked by how often they fire on held-out texts; with
    # none specific, the most tuned-leaning ones
    candidates = cc.specific_latents("tuned") + cc.specific_latents("base")
    if not cc.specific_latents("tuned"):
        candidates += [int(i) for i in table.sort_values("relative_norm")["latent"].tail(5)]
    examples = crosscoder_examples(
        base, tuned, cc, candidates, examples_corpus, ExampleConfig(context_len=32, n_top=10)
    )
    ranked = sorted(zip(candidates, examples, strict=True), key=lambda pair: -pair[1].activating_fraction)
    found_rows = []
    for tuned_side in (True, False):
        side = [(i, e) for i, e in ranked if (float(cc.relative_norms()[i]) >= 0.5) == tuned_side]
        for latent, found in side[: 5 if tuned_side else 2]:
            active = [
                (c.tokens[i - 1] if i else "", t)
                for c in found.top
                for i, (t, on) in enumerate(zip(c.tokens, c.active, strict=True))
                if on
            ]
            at_comma = [t == "," or prev == "," for prev, t in active]
            found_rows.append(
                {
                    "latent": latent,
                    "relative_norm": round(float(cc.relative_norms()[latent]), 3),
                    "specific_to": table.loc[latent, "specific_to"],
                    "activating_fraction": round(found.activating_fraction, 5),
                    "active_at_or_after_comma": round(float(np.mean(at_comma)), 3) if active else None,
                    "top_contexts": [c.marked() for c in found.top[:3]],
                }
            )
    done = time.perf_counter()
    if losses:
        print(f"fine-tune loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}")
    print(f"P(' indeed' after a comma) on held-out fortunes: base {before:.4f}, tuned {after:.4f}")
    print(f"latents by relative decoder norm: {counts}")
    for row in found_rows:
        print(row)
    print(
        json.dumps(
            {
                "behaviour_base": before,
                "behaviour_tuned": after,
                "specific": counts,
                "leaning": found_rows,
                "finetune_s": finetuned - start,
                "collect_s": collected - finetuned,
                "crosscoder_s": trained - collected,
                "examples_s": done - trained,
                "args": vars(args),
            }
        )
    )


if __name__ == "__main__":
    main()
