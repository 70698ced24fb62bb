"""Feature dashboards: the right contexts, and one offline HTML page that renders in Chromium."""

from __future__ import annotations

import pytest
import torch
from browser import render_page, skip_without_chromium

from mechinterp.data.corpus import load_corpus
from mechinterp.plotting import dashboard_html, sae_evaluation_figure
from mechinterp.sae import SAE, SAEConfig, evaluate_sae, feature_dashboards


@pytest.fixture(scope="module")
def sae(tiny_llama):
    cfg = SAEConfig(architecture="relu", d_in=64, d_sae=32, hook_name="blocks.0.hook_resid_post")
    return SAE.create(cfg, seed=3)


def test_dashboard_contexts_peak_where_the_latent_does(tiny_llama, sae):
    texts = load_corpus("docstrings", "test", max_texts=12)
    boards = feature_dashboards(tiny_llama, sae, texts, [0, 5], n_contexts=3, context=24)
    name = "blocks.0.hook_resid_post.hook_sae_acts_post"
    for board in boards.features:
        assert len(board.contexts) == 3 and board.activations.gt(0).all()
        best = board.contexts[0]
        tokens, _ = tiny_llama.encode([texts[best.text_index]])
        with tiny_llama.saes([sae]):
            _, cache = tiny_llama.run_with_cache(tokens[:, :24], names_filter=[name])
        peak = cache[name][0, 1:, board.feature].max()  # position 0 is the BOS token
        assert best.peak == pytest.approx(float(peak), rel=1e-5) and max(best.activations) == best.peak
        assert [c.peak for c in board.contexts] == sorted((c.peak for c in board.contexts), reverse=True)
        assert len(board.promoted) == 10 and board.promoted[0][1] >= board.suppressed[0][1]
    # streamed: batches of 2 texts keep only the best windows, and find the same ones
    small = feature_dashboards(tiny_llama, sae, texts, [0, 5], n_contexts=3, context=24, texts_per_forward=2)
    for board, other in zip(boards.features, small.features, strict=True):
        assert [c.text_index for c in board.contexts] == [c.text_index for c in other.contexts]
        assert [c.tokens for c in board.contexts] == [c.tokens for c in other.contexts]
        assert [c.peak for c in board.contexts] == pytest.approx([c.peak for c in other.contexts], rel=1e-5)


def test_dashboard_page_renders_offline_in_chromium(tiny_llama, sae, tmp_path):
    pytest.importorskip("playwright")
    skip_without_chromium()
    texts = load_corpus("docstrings", "test", max_texts=8)
    boards = feature_dashboards(tiny_llama, sae, texts, [1, 2, 3], context=24)
    page = dashboard_html(boards)
    assert page.count("plotly.js v") == 1 and 'src="http' not in page
    (tmp_path / "dashboards.html").write_text(page)
    result = render_page(tmp_path / "dashboards.html")
    assert result.console_errors == [] and result.page_errors == []
    assert result.plot_count == 3
    figure = sae_evaluation_figure(evaluate_sae(tiny_llama, sae, texts, context=24))
    assert len(figure.data) == 2 and torch.isfinite(torch.tensor(figure.data[0].y)).all()
