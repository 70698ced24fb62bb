"""Path patching: batched vs the one-forward-per-sender reference, and its identities."""

from __future__ import annotations

import pytest
import torch

import mechinterp
from mechinterp.metrics import LogitDifference
from mechinterp.models.tiny import tiny_hf_model
from mechinterp.patching import PatchSite, Receiver, SweepSpec, patch_sweep, path_patch, reference_path_patch


@pytest.fixture(
    scope="module",
    params=[("llama", 2), ("gpt2", None), ("gpt_neox", None)],
    ids=["llama-gqa", "gpt2", "gpt_neox-parallel"],
)
def three_layer_model(request):
    family, kv = request.param
    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=kv, n_layers=3)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


# the other families (post-norms, QK-norms, soft-caps, sliding windows, interleaved rotary)
MORE_FAMILIES = [("gemma2", 2), ("gemma3", 2), ("qwen3", 2), ("olmo2", 2), ("phi3", 2), ("gptj", None)]


@pytest.fixture(scope="module", params=MORE_FAMILIES, ids=[family for family, _ in MORE_FAMILIES])
def family_model(request):
    family, kv = request.param
    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=kv, n_layers=3)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


def test_every_family_batched_equals_reference_and_activation_patching(family_model):
    test_batched_equals_reference(family_model, "denoise")
    test_every_input_as_receiver_equals_activation_patching(family_model, "z")


def pair():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(3, 98, (2, 7), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 2] = 9
    corrupt[1, 4] = 11
    metric = LogitDifference.last_position(
        torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8], reduce="none"
    )
    return clean, corrupt, metric


def every_input(model) -> list[Receiver]:
    layers = range(model.cfg.n_layers)
    return [
        *(Receiver(k, layer) for layer in layers for k in ("q", "k", "v")),
        *(Receiver("mlp", layer) for layer in layers),
        Receiver("logits"),
    ]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_batched_equals_reference(three_layer_model, direction):
    clean, corrupt, metric = pair()
    spec = SweepSpec(kind="z", per_position=False)
    receivers = [
        Receiver("q", 2, 1),
        Receiver("k", 2, 0),
        Receiver("v", 1),
        Receiver("mlp", 1),
        Receiver("logits"),
    ]
    batched = path_patch(
        three_layer_model,
        clean,
        corrupt,
        spec,
        receivers,
        metric,
        direction=direction,
        progress=False,
        max_batch_rows=5,
    )
    reference = reference_path_patch(
        three_layer_model,
        clean,
        corrupt,
        spec.enumerate(three_layer_model, 7).cells,
        receivers,
        metric,
        direction=direction,
    )
    torch.testing.assert_close(batched.values.reshape(-1, 2), reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["z", "attn_out", "mlp_out"])
def test_every_input_as_receiver_equals_activation_patching(three_layer_model, kind):
    clean, corrupt, metric = pair()
    spec = SweepSpec(kind=kind, per_position=False)
    paths = path_patch(
        three_layer_model, clean, corrupt, spec, every_input(three_layer_model), metric, progress=False
    )
    nodes = patch_sweep(three_layer_model, clean, corrupt, spec, metric, progress=False)
    torch.testing.assert_close(paths.values, nodes.values, atol=1e-4, rtol=0)


@torch.no_grad()
def test_direct_path_to_logits_is_the_unembedded_head_output(three_layer_model):
    model = three_layer_model
    clean, corrupt, metric = pair()
    site = PatchSite(kind="z", layer=0, head=2)
    result = path_patch(model, clean, corrupt, [site], [Receiver("logits")], metric, progress=False)
    _, base = model.run_with_cache(corrupt)
    _, source = model.run_with_cache(clean)
    z_change = source["blocks.0.attn.hook_z"][:, :, 2] - base["blocks.0.attn.hook_z"][:, :, 2]
    final = base[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"] + z_change @ model.blocks[0].attn.W_O[2]
    logits = model.unembed(model.ln_final(final))
    torch.testing.assert_close(
        result.values[0], metric.score(logits[torch.arange(2), [6, 6]], torch.arange(2)), atol=1e-5, rtol=0
    )


def test_receivers_that_do_not_exist(three_layer_model):
    clean, corrupt, metric = pair()
    spec = SweepSpec(kind="z", per_position=False)
    cases = [
        (Receiver("q", 3, 0), r"layer 3 does not exist \(model has 3 layers\)"),
        (Receiver("q", 1, 9), r"head 9 does not exist \(q inputs have 4 heads\)"),
        (Receiver("mlp", 1, 0), "an MLP receiver has no head"),
        (Receiver("logits", 1), "a logits receiver takes no layer or head"),
    ]
    for receiver, message in cases:
        with pytest.raises(ValueError, match=message):
            path_patch(three_layer_model, clean, corrupt, spec, [receiver], metric, progress=False)
    with pytest.raises(ValueError, match="senders must be of kind z, attn_out, mlp_out"):
        path_patch(three_layer_model, clean, corrupt, SweepSpec(kind="q"), [Receiver("logits")], metric)
    with pytest.raises(TypeError, match="(path_patch needs a positional metric|PositionalMetric)"):
        path_patch(three_layer_model, clean, corrupt, spec, [Receiver("logits")], lambda logits: logits.sum())


def test_a_path_patch_is_an_edge_patch_of_the_senders_edges(three_layer_model):
    """Both run on the one masked executor: a head's path into every input it feeds, in the
    noising direction (clean run, corrupt value on the paths), equals edge patching with
    exactly that head's outgoing edges on."""
    from circuits import Graph, Node, patch_edges

    model = three_layer_model
    clean, corrupt, metric = pair()
    graph = Graph.from_model(model)
    for layer, head in [(0, 1), (1, 0)]:
        paths = path_patch(
            model,
            clean,
            corrupt,
            [PatchSite(kind="z", layer=layer, head=head)],
            every_input(model),
            metric,
            direction="noise",
            progress=False,
        )
        edges = torch.tensor([float(e.source == Node("head", layer, head)) for e in graph.edges])
        patched = patch_edges(model, clean, corrupt, graph, edges[None], metric)
        torch.testing.assert_close(paths.values[0], patched[0], atol=1e-5, rtol=0)


def test_sparse_and_dense_fixed_products_agree():
    from mechinterp.patching.masked import fixed_product

    generator = torch.Generator().manual_seed(1)
    deltas = torch.randn(6, 10, generator=generator)
    sparse = torch.zeros(4, 3, 6)
    sparse[torch.arange(4), 0, torch.tensor([0, 2, 5, 5])] = torch.tensor([1.0, 0.5, 1.0, 0.25])
    dense = torch.rand(4, 3, 6, generator=generator)
    for masks in (sparse, dense):
        literal = torch.einsum("rsk,kv->rsv", masks, deltas)
        torch.testing.assert_close(fixed_product(masks, deltas), literal, atol=1e-6, rtol=0)
