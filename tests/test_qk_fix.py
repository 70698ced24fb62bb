"""AtP*'s QK fix, computed for all cells at once, equals a literal per-cell recomputation of
the attention pattern (grouped-query model, several layers, heads and positions whole or
single)."""

from __future__ import annotations

import pytest
import torch

from mechinterp.metrics import LogitDifference
from mechinterp.patching import SweepSpec, attribution_patch
from mechinterp.patching.engine import site_index


def literal_qk_estimates(model, clean, corrupt, metric, spec):
    """One softmax per cell with the cell's queries or keys from the corrupt run, then
    ``sum((pattern_patched - pattern) * dM/dpattern)``; plain einsum, no engine helpers."""
    names = []
    for layer in range(model.architecture.n_layers):
        names += [
            f"blocks.{layer}.attn.hook_rot_q",
            f"blocks.{layer}.attn.hook_rot_k",
            f"blocks.{layer}.attn.hook_pattern",
        ]
    _, source = model.run_with_cache(clean, names_filter=names)
    base = {}

    def keep(activation, hook):
        base[hook.name] = activation
        return activation

    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, keep) for n in names]):
        logits = model(corrupt)
        rows = torch.arange(corrupt.shape[0])
        total = metric.score(logits[rows, metric.positions], rows).sum()
        patterns = [n for n in names if n.endswith("pattern")]
        grads = dict(zip(patterns, torch.autograd.grad(total, [base[n] for n in patterns]), strict=True))
    group = model.architecture.heads_per_kv_head
    n_pos = clean.shape[1]
    causal = torch.ones(n_pos, n_pos).tril().bool()
    out = []
    for site in spec.enumerate(model, n_pos).cells:
        q = base[f"blocks.{site.layer}.attn.hook_rot_q"].detach().clone()
        k = base[f"blocks.{site.layer}.attn.hook_rot_k"].detach().clone()
        target = q if site.kind == "q" else k
        donor = source[f"blocks.{site.layer}.attn.hook_rot_{site.kind}"]
        index = (slice(None), *site_index(site))
        target[index] = donor[index]
        scores = (
            torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(group, dim=2)) * model.architecture.scale
        )
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        old = base[f"blocks.{site.layer}.attn.hook_pattern"].detach()
        out.append(((pattern - old) * grads[f"blocks.{site.layer}.attn.hook_pattern"]).sum((1, 2, 3)))
    return torch.stack(out)


@pytest.mark.parametrize(
    "spec",
    [
        SweepSpec(kind="q"),
        SweepSpec(kind="k"),
        SweepSpec(kind="k", per_position=False),
        SweepSpec(kind="k", per_head=False),
        SweepSpec(kind="q", per_head=False, per_position=False),
    ],
    ids=["q", "k", "k_all_positions", "k_all_heads", "q_layer"],
)
def test_vectorised_qk_fix_equals_per_cell_softmax(tiny_llama, spec):
    clean = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(3))
    corrupt = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(4))
    metric = LogitDifference.last_position(torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8])
    ours = attribution_patch(tiny_llama, clean, corrupt, metric, spec, method="atp*", grad_drop=False)
    expected = literal_qk_estimates(tiny_llama, clean, corrupt, metric, spec)
    torch.testing.assert_close((ours.values - ours.base).flatten(), expected.flatten(), atol=1e-5, rtol=1e-4)
