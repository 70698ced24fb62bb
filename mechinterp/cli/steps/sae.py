"""Step ``sae``: train (or load) a sparse autoencoder, evaluate it, and write dashboards.

Training reads ``train_texts`` texts of the corpus's training split through the model up to
``hook``; evaluation (explained variance, L0, dead latents, CE loss recovered) and dashboards
use ``eval_texts`` texts of its test split (the default corpus tests on another source).

Writes ``sae/`` (``SAE.save``; ``load_sae`` reads it), ``evaluation.json``, the evaluation
figure and ``dashboards.html`` (the ``dashboards`` most frequent latents).

Example config::

    - kind: sae
      hook: blocks.15.hook_resid_post
      d_sae: 4608
      k: 32
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mechinterp.cli.schema import SAEStep
from mechinterp.cli.steps.output import StepOutput, table
from mechinterp.data.corpus import load_corpus
from mechinterp.plotting import dashboard_html, sae_evaluation_figure
from mechinterp.sae import (
    ActivationStream,
    TrainingConfig,
    evaluate_sae,
    feature_dashboards,
    load_sae,
    train_sae,
)


def run(step: SAEStep, context, out: Path) -> StepOutput:
    model = context.model
    if step.load is not None:
        sae = load_sae(step.load, hook_name=step.hook).to(model.device)
    else:
        texts = load_corpus(step.corpus, "train", max_texts=step.train_texts, seed=step.seed)
        buffer = min(65536, max(8 * step.batch_size, step.samples // 4))  # small runs: small buffer
        stream = ActivationStream(
            model, texts, step.hook, context=step.context, buffer_tokens=buffer, seed=step.seed
        )
        training = TrainingConfig(samples=step.samples, batch_size=step.batch_size, lr=step.lr)
        sae = train_sae(
            stream,
            d_sae=step.d_sae,
            architecture=step.architecture,
            k=step.k,
            seed=step.seed,
            training=training,
        )
    sae.save(out / "sae")
    held_out = load_corpus(step.corpus, "test", max_texts=step.eval_texts, seed=step.seed)
    result = evaluate_sae(model, sae, held_out, context=step.context)
    result.save(out / "evaluation.json")
    summary = {
        key: round(value, 4) if isinstance(value, float) else value for key, value in result.summary().items()
    }
    frequent = result.latent_frequency.argsort(descending=True)[: step.dashboards].tolist()
    if frequent:
        boards = feature_dashboards(model, sae, held_out, frequent, context=step.context)
        (out / "dashboards.html").write_text(dashboard_html(boards))
    frame = pd.DataFrame({"latent": frequent, "frequency": result.latent_frequency[frequent].numpy()})
    return StepOutput(
        summary={
            k: summary[k] for k in ("explained_variance", "l0", "dead_fraction", "ce_recovered", "n_tokens")
        },
        figures={"evaluation": sae_evaluation_figure(result)},
        tables=[table(f"most frequent latents of the SAE at {sae.cfg.splice_hook}", frame)],
    )
