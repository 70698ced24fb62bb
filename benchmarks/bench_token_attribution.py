"""Integrated gradients on SmolLM2-135M: ``attribute_tokens`` vs captum 0.9, same process.

    .venv/bin/python benchmarks/bench_token_attribution.py [--steps 128] [--repeats 3] [--device cpu]
    .venv/bin/python benchmarks/bench_token_attribution.py --tiny     # a tiny random Llama: proves it runs

Both attribute ``logit[' Paris'] - logit[' London']`` at the last token of a 10-token prompt
to the input embeddings, from the pad-token baseline, with ``--steps`` Gauss-Legendre points:

- ours: ``attribute_tokens(model, prompt, ..., steps=128)`` on the native model (every step of
  the path is a row of one batched forward/backward, chunked to a memory budget; only the
  answer's unembedding columns are computed);
- captum: ``IntegratedGradients`` over ``inputs_embeds`` of the Hugging Face model behind the
  same checkpoint (``mechinterp.load_hf``), ``internal_batch_size=32``.

Prints the best-of-``--repeats`` wall time of each, their ratio, and how far apart the
attributions are (relative to the largest one). Compare ratios, not seconds. ``--flops``
also counts floating-point operations (matrix products, attention; a dispatch-level count,
independent of the machine's load).
"""

from __future__ import annotations

import argparse
import time

import torch
from captum.attr import IntegratedGradients
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import mechinterp
from mechinterp.models.tiny import tiny_hf_model
from mechinterp.token_attribution import attribute_tokens

PROMPT = "The Eiffel Tower is in the city of"


class CountFlops(TorchDispatchMode):
    """Floating-point operations of every op torch's flop counter knows (matmuls, attention,
    convolutions). ``torch.utils.flop_counter.FlopCounterMode`` cannot be used here: its module
    hooks reject ``torch.autograd.grad`` on a leaf tensor, which both sides call."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._overloadpacket in flop_registry:
            self.total += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        return out


def flops(run) -> int:
    with CountFlops() as counter:
        run()
    return counter.total


def best_time(run, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--internal-batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of SmolLM2")
    parser.add_argument("--flops", action="store_true", help="also count floating-point operations")
    args = parser.parse_args()

    if args.tiny:
        hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
        model = mechinterp.load_model(hf_model, tokenizer=tokenizer, device=args.device)
        prompt, correct, incorrect = "hello wor", "l", "x"
    else:
        model = mechinterp.load_model("smollm2-135m", device=args.device)
        hf_model, _ = mechinterp.load_hf("smollm2-135m")
        prompt, correct, incorrect = PROMPT, " Paris", " London"
    hf_model = hf_model.to(args.device).eval()
    right, wrong = model.to_single_token(correct), model.to_single_token(incorrect)
    tokens = model.to_tokens(prompt)
    pad = model.tokenizer.pad_token_id
    embed = hf_model.get_input_embeddings()
    with torch.no_grad():
        inputs, baselines = embed(tokens), embed(torch.full_like(tokens, pad))

    def forward(embeds):
        logits = hf_model(inputs_embeds=embeds).logits[:, -1]
        return logits[:, right] - logits[:, wrong]

    def ours():
        return attribute_tokens(model, prompt, correct=right, incorrect=wrong, steps=args.steps, baseline=pad)

    def theirs():
        ig = IntegratedGradients(forward)
        attribution = ig.attribute(
            inputs, baselines=baselines, n_steps=args.steps, internal_batch_size=args.internal_batch_size
        )
        return attribution.sum(-1).detach()

    ours(), theirs()  # warm-up
    our_time, attribution = best_time(ours, args.repeats)
    captum_time, reference = best_time(theirs, args.repeats)
    largest = reference.abs().max().item()
    gap = (attribution.values - reference.cpu()).abs().max().item() / largest
    name = "tiny llama" if args.tiny else "SmolLM2-135M"
    print(f"{name}, {tokens.shape[1]}-token prompt, {args.steps} Gauss-Legendre steps, device {args.device}")
    print(f"  attribute_tokens:                              {our_time:8.3f} s")
    print(f"  captum IntegratedGradients (batch {args.internal_batch_size:>3}):       {captum_time:8.3f} s")
    print(f"  ratio captum / ours: {captum_time / our_time:.2f}x")
    print(
        f"  max |ours - captum| / max |captum|: {gap:.2e}; completeness gap {attribution.completeness.max_gap:.4f}"
    )
    if args.flops:
        ours_flops, captum_flops = flops(ours), flops(theirs)
        print(
            f"  GFLOP: ours {ours_flops / 1e9:.1f}, captum {captum_flops / 1e9:.1f} "
            f"(captum / ours {captum_flops / ours_flops:.2f}x)"
        )


if __name__ == "__main__":
    main()
