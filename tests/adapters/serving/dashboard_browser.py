"""Open the ``infer-os serve`` dashboard in headless Chromium (Playwright for Python) and read back
what the page drew: its ``window.dashboardState``, the number of Plotly traces in each chart and
every console or page error. A helper for tests, not a test module."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
CHART_IDS = ("chart-tok-s", "chart-latency", "chart-kv", "chart-acceptance", "chart-queue",
             "chart-timeline")

_TRACES_JS = """(ids) => {
  const out = {};
  for (const id of ids) {
    const el = document.getElementById(id);
    out[id] = el && Array.isArray(el.data) ? el.data.length : 0;
  }
  return out;
}"""

_OVERFLOW_JS = """() => Math.max(0, document.documentElement.scrollWidth
                                      - document.documentElement.clientWidth)"""


def chromium_available() -> str | None:
    """Why the dashboard cannot be opened in a browser here, or None when it can."""
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM}"
    if importlib.util.find_spec("playwright") is None:
        return "playwright (python) is not installed"
    try:
        import playwright.sync_api  # noqa: F401
    except Exception as exc:  # any import failure makes it unusable
        return f"playwright is not importable: {exc}"
    return None


def require_chromium() -> None:
    """Skip without a usable Chromium here.  ``INFER_OS_REQUIRE_BROWSER=1`` (``.ci/run`` sets it
    once Chromium is installed) makes an unusable browser a failure: the browser tests then
    cannot pass by not running."""
    import os

    import pytest

    reason = chromium_available()
    if reason and os.environ.get("INFER_OS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser tests must run here: {reason}")
    if reason:
        pytest.skip(reason)


def open_dashboard(url: str, screenshot: Path | None = None, min_polls: int = 3,
                   timeout_s: float = 30, viewport: tuple[int, int] = (1400, 900)
                   ) -> dict[str, Any]:
    """Load ``url`` in headless Chromium, wait until the page has made ``min_polls`` successful
    polls, optionally save a full-page screenshot, and return ``{"state": dashboardState,
    "console_errors": [...], "plotly_traces": {chart id: traces}, "horizontal_overflow_px": n}``.

    Raises TimeoutError (with the errors seen so far) when the polls do not come in time."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.on("console", lambda msg: errors.append(f"console: {msg.text}")
                    if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("requestfailed", lambda req: errors.append(
                f"requestfailed: {req.url} ({req.failure})"))
            page.goto(url, wait_until="load", timeout=timeout_s * 1000)
            try:
                page.wait_for_function(
                    "(n) => window.dashboardState && window.dashboardState.polls >= n",
                    arg=min_polls, timeout=timeout_s * 1000, polling=100)
            except PlaywrightError as exc:
                status = page.evaluate(
                    "() => (document.getElementById('status-text') || {}).textContent || ''")
                raise TimeoutError(
                    f"dashboard at {url} did not reach {min_polls} polls in {timeout_s} s "
                    f"(status line: {status!r}; errors: {errors})") from exc
            state = page.evaluate("() => window.dashboardState")
            traces = page.evaluate(_TRACES_JS, list(CHART_IDS))
            overflow = page.evaluate(_OVERFLOW_JS)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"state": state, "console_errors": list(errors), "plotly_traces": traces,
            "horizontal_overflow_px": overflow}
