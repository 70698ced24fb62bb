"""SAE training recovers planted truth, resumes from checkpoints, trains on a model's
activations (SAEs and transcoders), and is evaluated against an exactly reconstructing SAE."""

from __future__ import annotations

import pytest
import torch

from mechinterp.data.corpus import load_corpus
from mechinterp.sae import SAE, ActivationStream, SAEConfig, TrainingConfig, evaluate_sae, train_sae
from mechinterp.sae.train import CHECKPOINT


def planted_dictionary(n=60000, d=64, m=256, active=4, seed=0):
    """``n`` samples, each a positive combination of ``active`` of ``m`` random unit directions."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(m, d, generator=g)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    chosen = torch.rand(n, m, generator=g).argsort(-1)[:, :active]
    coefficients = torch.rand(n, active, generator=g) * 2 + 0.5
    return torch.zeros(n, m).scatter(-1, chosen, coefficients) @ directions, directions


def test_topk_recovers_a_planted_dictionary():
    x, truth = planted_dictionary()
    sae = train_sae(x, d_sae=256, k=4, training=TrainingConfig(samples=200_000), progress=False)
    learned = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    best = (learned @ truth.T).max(0).values  # best cosine of each true direction
    assert best.mean() >= 0.95, best.mean()
    assert (sae.encode(x[:1000]) > 0).sum(-1).float().mean() <= 4


def test_checkpoints_resume_exactly(tmp_path):
    x, _ = planted_dictionary(n=4096, d=16, m=32, active=2)
    training = TrainingConfig(samples=40 * 256, batch_size=256, checkpoint_every=10)
    reference = train_sae(x, d_sae=32, k=2, training=training, progress=False)

    def interrupt(info):
        if info.step == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(
            x, d_sae=32, k=2, training=training, checkpoint_dir=tmp_path, callback=interrupt, progress=False
        )
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 20
    resumed = train_sae(x, d_sae=32, k=2, training=training, checkpoint_dir=tmp_path, progress=False)
    torch.testing.assert_close(resumed.W_dec, reference.W_dec)
    torch.testing.assert_close(resumed.b_enc, reference.b_enc)
    with pytest.raises(ValueError, match="other settings"):
        train_sae(x, d_sae=32, k=3, training=training, checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize("architecture", ["jumprelu", "relu", "gated"])
def test_other_architectures_learn_sparse_reconstructions(architecture):
    x, _ = planted_dictionary(n=8192, d=32, m=64, active=2, seed=1)
    training = TrainingConfig(samples=100_000, batch_size=256)
    sae = train_sae(x, d_sae=64, architecture=architecture, training=training, progress=False)
    recon = sae(x[:2000])
    fvu = (recon - x[:2000]).pow(2).sum() / (x[:2000] - x[:2000].mean(0)).pow(2).sum()
    l0 = (sae.encode(x[:2000]) > 0).sum(-1).float().mean()
    assert fvu < 0.5 and l0 < 24, (fvu, l0)


def test_stream_training_transcoder_and_evaluation(tiny_llama):
    texts = load_corpus("docstrings", "train", max_texts=64)
    hook = "blocks.0.hook_resid_post"
    stream = ActivationStream(tiny_llama, texts, hook, context=32, buffer_tokens=1024)
    assert stream.stop == 1
    training = TrainingConfig(samples=20 * 256, batch_size=256)
    sae = train_sae(stream, d_sae=128, k=8, training=training, progress=False)
    assert sae.hook_name == hook and sae.cfg.apply_b_dec_to_input
    held_out = load_corpus("docstrings", "test", max_texts=8)
    result = evaluate_sae(tiny_llama, sae, held_out, context=32)
    assert 0 < result.l0 <= 8 and 0 <= result.dead_fraction <= 1
    assert result.n_tokens > 0 and result.ce_zero_ablated != result.ce_clean

    tc_stream = ActivationStream(
        tiny_llama,
        texts,
        "blocks.1.hook_mlp_in",
        hook_name_out="blocks.1.hook_mlp_out",
        context=32,
        buffer_tokens=1024,
    )
    losses = []
    transcoder = train_sae(
        tc_stream, d_sae=128, k=8, training=training, progress=False, callback=lambda i: losses.append(i.mse)
    )
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    assert transcoder.cfg.splice_hook == "blocks.1.hook_mlp_out" and not transcoder.cfg.apply_b_dec_to_input
    tokens = tiny_llama.encode(held_out[:2])[0][:, :16]
    clean = tiny_llama(tokens)
    with tiny_llama.saes([transcoder], use_error_term=True):
        torch.testing.assert_close(tiny_llama(tokens), clean, atol=1e-3, rtol=0)


def test_evaluation_of_an_exact_sae_recovers_everything(tiny_llama):
    """relu([x, -x]) decoded by [I; -I] reconstructs x exactly: EV 1, CE recovered 1."""
    d = tiny_llama.architecture.d_model
    sae = SAE(SAEConfig(architecture="relu", d_in=d, d_sae=2 * d, hook_name="blocks.0.hook_resid_post"))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    result = evaluate_sae(tiny_llama, sae, load_corpus("docstrings", "test", max_texts=6), context=24)
    assert result.explained_variance == pytest.approx(1, abs=1e-5)
    assert result.ce_recovered == pytest.approx(1, abs=1e-4)
    assert result.dead_fraction == 0 and result.l0 == pytest.approx(d, abs=1)
