"""Render a local HTML file in headless Chromium and report what went wrong in it.

Uses the ``playwright`` Python package (dev extra) to drive the system Chromium
(``/usr/bin/chromium``, Debian package ``chromium``): playwright's own browser download is never
used, and the browser gets no network beyond the file itself (``.ci/run`` installs the package).

    result = render_page("runs/ioi/circuit.html")
    assert result.console_errors == [] and result.page_errors == [] and result.plot_count >= 1

``render_page`` waits for the page's ``load`` event and then until no plotly plot is still
drawing, so ``plot_count`` counts the ``.js-plotly-plot`` elements that have drawn their
``svg.main-svg``. Tests that need it skip with ``pytest.importorskip("playwright")`` and
``skip_without_chromium()``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class RenderResult:
    """``console_errors``: text of every ``console.error`` message; ``page_errors``: uncaught
    exceptions; ``plot_count``: rendered plotly plots; ``value``: the result of ``script``."""

    console_errors: list[str]
    page_errors: list[str]
    plot_count: int
    value: object = None  # what ``render_page(script=...)`` evaluated to


def skip_without_chromium() -> None:
    """Skip the calling test when the system Chromium is not installed."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does it)")


def render_page(path: str | Path, *, timeout_ms: int = 30_000, script: str | None = None) -> RenderResult:
    """Open the local file ``path`` in headless Chromium and collect its errors and plots;
    ``script`` (a JavaScript function expression, e.g. ``"() => document.title"``) runs after the
    plots have drawn and its result is ``value``."""
    from playwright.sync_api import sync_playwright

    console_errors: list[str] = []
    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(Path(path).resolve().as_uri(), wait_until="load", timeout=timeout_ms)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.js-plotly-plot')]"
                ".every(plot => plot.querySelector('svg.main-svg'))",
                timeout=timeout_ms,
            )
            plot_count = page.locator(".js-plotly-plot:has(svg.main-svg)").count()
            value = page.evaluate(script) if script is not None else None
        finally:
            browser.close()
    return RenderResult(console_errors, page_errors, plot_count, value)
