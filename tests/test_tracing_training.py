"""Training transcoders (``circuits.tracing.train_transcoders``): the scales fold back exactly,
training beats the untrained start on held-out text, checkpoints resume and refuse other settings."""

from __future__ import annotations

import pytest
import torch

import mechinterp
from circuits.tracing import trace, train_transcoders, training
from circuits.tracing.training import CHECKPOINT, _Dictionary, unexplained_variance
from mechinterp.data.corpus import load_corpus
from mechinterp.models.tiny import tiny_hf_model
from mechinterp.sae import TrainingConfig

TEXTS = load_corpus(max_texts=300)
HELD_OUT = load_corpus(split="test", max_texts=30)


def test_the_scales_fold_into_the_weights_exactly():
    cfg = TrainingConfig()
    for kind, activation in (("clt", "topk"), ("plt", "jumprelu")):
        dictionary = _Dictionary(3, 8, 5, kind, activation, 2, cfg, seed=0)
        with torch.no_grad():
            dictionary.b_enc.normal_(generator=torch.Generator().manual_seed(1))
            dictionary.b_dec.normal_(generator=torch.Generator().manual_seed(2))
        s_in, s_out = torch.tensor([0.5, 2.0, 3.0]), torch.tensor([1.5, 0.25, 4.0])
        x = torch.randn(7, 3, 8, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            expected = dictionary.reconstruct(dictionary.features(x * s_in[:, None])) / s_out[:, None]
        tc = dictionary.transcoder(s_in, s_out, "mlp_in")
        acts = [tc.encode(layer, x[:, layer]) for layer in range(3)]
        got = torch.stack([tc.decode(layer, acts) for layer in range(3)], 1)
        assert torch.allclose(got, expected, atol=1e-5), kind


@pytest.fixture(scope="module")
def three_layers():
    """Three layers: a layer count that differs from the (input, output) pair axis."""
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2, n_layers=3)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


def test_training_beats_the_untrained_start_and_traces(three_layers):
    tiny_llama = three_layers
    settings = dict(d_tc=32, kind="clt", k=4, buffer_tokens=4096, progress=False)
    trained = train_transcoders(
        tiny_llama, TEXTS, training=TrainingConfig(samples=256 * 60, batch_size=256), **settings
    )
    start = train_transcoders(
        tiny_llama, TEXTS, training=TrainingConfig(samples=256, batch_size=256, lr=1e-12), **settings
    )
    assert trained.kind == "clt" and trained.widths == (32,) * tiny_llama.architecture.n_layers
    fvu_trained, fvu_start = (unexplained_variance(tiny_llama, tc, HELD_OUT) for tc in (trained, start))
    assert fvu_trained < 0.95 and fvu_trained < fvu_start - 0.2, (fvu_trained, fvu_start)
    graph = trace(tiny_llama, trained, "the cat", progress=False)
    assert graph.n_features > 0 and graph.edges._nnz() > 0


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_llama, tmp_path, monkeypatch):
    settings = dict(d_tc=16, kind="plt", activation="jumprelu", buffer_tokens=2048, progress=False)
    config = TrainingConfig(samples=128 * 8, batch_size=128, checkpoint_every=4)
    stream = training._activation_batches
    served = []

    def counted(*args, fail_after=None):
        for n, batch in enumerate(stream(*args)):
            if n == fail_after:
                raise KeyboardInterrupt
            served.append(n)
            yield batch

    # the first run dies after the scale batch and 5 steps: its last checkpoint is step 4
    monkeypatch.setattr(training, "_activation_batches", lambda *a: counted(*a, fail_after=6))
    with pytest.raises(KeyboardInterrupt):
        train_transcoders(tiny_llama, TEXTS, training=config, checkpoint_dir=tmp_path, **settings)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 4
    served.clear()
    monkeypatch.setattr(training, "_activation_batches", lambda *a: counted(*a))
    resumed = train_transcoders(tiny_llama, TEXTS, training=config, checkpoint_dir=tmp_path, **settings)
    assert len(served) == 1 + 4  # the scale batch, then steps 5..8 only
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 8 and resumed.kind == "plt" and resumed.activation == "jumprelu"
    other = TrainingConfig(samples=128 * 8, batch_size=128, checkpoint_every=2)
    with pytest.raises(ValueError, match="other settings"):
        train_transcoders(tiny_llama, TEXTS, training=other, checkpoint_dir=tmp_path, **settings)
    with pytest.raises(ValueError, match="topk.*jumprelu"):
        train_transcoders(tiny_llama, TEXTS, d_tc=4, activation="relu", progress=False)
