"""Model diffing on SmolLM2-135M: fine-tune a copy to prefer one planted behaviour, train a
BatchTopK crosscoder on both, and ask whether the latents specific to the fine-tune show it.

    .venv/bin/python benchmarks/bench_model_diff.py [--finetune-steps 150] [--samples 150000]

The planted behaviour: in the fine-tuning texts (WordNet glosses of the offline corpus's
training split), every comma is followed by " indeed". The fine-tuned model learns to put
" indeed" after a comma; the base model does not. Then:

1. the behaviour, measured on held-out texts (Debian fortunes, a different source): mean
   probability of " indeed" right after a comma, base vs tuned;
2. a crosscoder (``train_crosscoder``, BatchTopK) on both models' residual stream at
   ``--hook`` over texts of the same held-out source, and its latents' relative decoder
   norms (how many are specific to either model);
3. the five most tuned-leaning latents and their top contexts (``crosscoder_examples``): does the token
   they fire on (and the one before it) show the behaviour, i.e. a comma?

Prints one table and a JSON line. Not run by the tests (minutes of CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

import mechinterp
from mechinterp.data.corpus import load_corpus
from mechinterp.datasets import crosscoder_examples, train_crosscoder
from mechinterp.explain import ExampleConfig
from mechinterp.sae import TrainingConfig

MARK = " indeed"


def plant(text: str) -> str:
    return text.replace(",", "," + MARK)


def finetune(model, texts: list[str], steps: int, batch: int, lr: float, context: int, seed: int):
    tuned = copy.deepcopy(model)
    tuned.train()
    parameters = [p for p in tuned.parameters() if p.is_floating_point()]
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        chosen = [plant(texts[i]) for i in rng.choice(len(texts), batch, replace=False)]
        tokens, mask = tuned.encode(chosen)
        tokens, mask = tokens[:, :context], mask[:, :context]
        logits = tuned(tokens, attention_mask=mask)
        target = tokens[:, 1:].masked_fill(~mask[:, 1:].bool(), -100)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    tuned.eval()
    for p in parameters:
        p.requires_grad_(False)
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--finetune-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--hook", default="blocks.20.hook_resid_post")
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--samples", type=int, default=150_000)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    base = mechinterp.load_model("smollm2-135m", device="cpu")
    train_texts = [t for t in load_corpus("wordnet", "train", max_texts=4000, seed=args.seed) if "," in t]
    tuned, losses = finetune(
        base, train_texts, args.finetune_steps, args.finetune_batch, args.lr, 64, args.seed
    )
    held = [t for t in load_corpus("fortunes", "train", max_texts=args.texts, seed=args.seed) if "," in t]
    before, after = behaviour(base, held[:200], 64), behaviour(tuned, held[:200], 64)
    finetuned = time.perf_counter()
    print(
        f"fine-tuned in {finetuned - start:.0f} s: P(' indeed' after a comma) {before:.4f} -> {after:.4f}",
        flush=True,
    )
    cc = train_crosscoder(
        base,
        tuned,
        held,
        args.hook,
        d_sae=args.d_sae,
        k=args.k,
        labels=("base", "tuned"),
        training=TrainingConfig(samples=args.samples, batch_size=512, lr=3e-3),
        context=64,
        buffer_tokens=16384,
    )
    trained = time.perf_counter()
    table = cc.latent_table()
    counts = table["specific_to"].value_counts().to_dict()
    leaning = [int(i) for i in table.sort_values("relative_norm")["latent"].tail(5)]
    examples = crosscoder_examples(
        base, tuned, cc, leaning, held[:800], ExampleConfig(context_len=32, n_top=10)
    )
    rows = []
    for latent, found in zip(leaning, examples, strict=True):
        active = [
            (c.tokens[i - 1] if i else "", t)
            for c in found.top
            for i, (t, on) in enumerate(zip(c.tokens, c.active, strict=True))
            if on
        ]
        at_comma = float(np.mean([t == "," or prev == "," for prev, t in active])) if active else float("nan")
        rows.append(
            {
                "latent": latent,
                "relative_norm": round(float(cc.relative_norms()[latent]), 3),
                "active_at_or_after_comma": round(at_comma, 3),
                "top_context": found.top[0].marked() if found.top else None,
            }
        )
    print(f"fine-tune loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}")
    print(f"P(' indeed' after a comma) on held-out fortunes: base {before:.4f}, tuned {after:.4f}")
    print(f"latents by relative decoder norm: {counts}")
    for row in rows:
        print(row)
    print(
        json.dumps(
            {
                "behaviour_base": before,
                "behaviour_tuned": after,
                "specific": counts,
                "leaning": rows,
                "finetune_s": finetuned - start,
                "crosscoder_s": trained - finetuned,
                "args": vars(args),
            }
        )
    )


if __name__ == "__main__":
    main()
