"""The ``infer-os report`` pages opened in headless Chromium (Playwright, as the dashboard's
browser test): a simulate, a validate and a sweep report each draw every chart with data, with
no console error, no fetch and no page-wide horizontal scroll bar; a timeline of thousands of
ops is drawn with WebGL.  Skipped without Chromium, a failure with INFER_OS_REQUIRE_BROWSER=1."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from sim.cli import main
from tests.adapters.serving.dashboard_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.sim.report import pages

ARGS = [*CHROMIUM_ARGS, "--enable-unsafe-swiftshader"]  # WebGL in software, for scattergl
SWEEP = """name: mini
description: "2 tiering policies x 2 KV budgets"
base: quickstart
axes:
  policies.tiering: [{kind: fp16}, {kind: uniform, precision: int8}]
  engine.kv_budget_bytes: [32.0e6, 64.0e6]
"""
STEP_KINDS = ("prefill", "decode", "verify", "draft", "retier")

_CHARTS_JS = """() => [...document.querySelectorAll("div.chart")].map((div) => ({
  title: div.dataset.title,
  plotted: div.classList.contains("js-plotly-plot"),
  traces: Array.isArray(div.data) ? div.data.length : 0,
  points: Array.isArray(div.data) ? div.data.reduce(
    (n, t) => n + ((t.x || t.y || []).length || 0), 0) : 0,
  svg: !!div.querySelector(".main-svg"),
  gl: !!div.querySelector("canvas"),
}))"""


def _quiet(args: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(args)


def _validate_folder(sim_out: Path, folder: Path) -> Path:
    """A validate folder made from a simulate one (each run stands in as its measured side, as
    in test_damaged.py), with a ``steps.{variant}.csv`` per variant."""
    shutil.copytree(sim_out, folder)
    results = json.loads((folder / "results.json").read_text())
    runs = []
    for k, run in enumerate(results["runs"]):
        pages.as_measured(folder, run["variant"])
        runs.append({"variant": run["variant"], "cost_model": "roofline",
                     "predicted": run["metrics"], "measured": run["metrics"],
                     "relative_error": {"throughput_tok_s": 0.05 * k, "ttft_s.p50": -0.1},
                     "per_request": {}, "shadow": {"decode": {
                         "steps": 40, "median": -0.02, "p10": -0.05, "p90": 0.01,
                         "median_abs": 0.02}}})
        with (folder / f"steps.{run['variant']}.csv").open("w", newline="") as f:
            columns = ["step", "phase", "batch", *(f"{side}_{kind}_s" for kind in
                                                   (*STEP_KINDS, "step")
                                                   for side in ("predicted", "measured"))]
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for i in range(40):
                kind = "prefill" if i % 10 == 0 else "decode"
                measured = (0.4 if kind == "prefill" else 0.03) * (1 + 0.01 * (i % 7))
                predicted = measured * (1 + 0.02 * ((i % 5) - 2) + 0.03 * k)
                writer.writerow({"step": i, "phase": kind, "batch": 1 + i % 4,
                                 f"predicted_{kind}_s": predicted, f"measured_{kind}_s": measured,
                                 "predicted_step_s": predicted, "measured_step_s": measured})
    (folder / "results.json").unlink()
    (folder / "validation.json").write_text(json.dumps(
        {"scenario": "quickstart", "backend": "fake", "runs": runs}))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    require_chromium()
    root = tmp_path_factory.mktemp("reports")
    assert _quiet(["simulate", "quickstart", "--out", str(root / "run")]) == 0
    _validate_folder(root / "run", root / "validate")
    (root / "mini.yaml").write_text(SWEEP)
    assert _quiet(["sweep", str(root / "mini.yaml"), "--out", str(root / "sweep"),
                   "--workers", "1"]) == 0
    for name in ("run", "validate", "sweep"):
        assert _quiet(["report", str(root / name)]) == 0
    return {name: root / name / "report.html" for name in ("run", "validate", "sweep")}


def open_report(page_path: Path, screenshot: Path | None = None) -> dict:
    """Load a report page from disk; what every chart drew, the errors seen, the page-wide
    horizontal overflow."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: errors.append(f"console: {msg.text}")
                    if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("request", lambda req: errors.append(f"request: {req.url}")
                    if not req.url.startswith(("file:", "data:", "blob:")) else None)
            page.goto(page_path.as_uri(), wait_until="load", timeout=30_000)
            page.wait_for_function("() => window.reportCharts !== undefined", timeout=30_000)
            charts = page.evaluate(_CHARTS_JS)
            overflow = page.evaluate("() => document.documentElement.scrollWidth"
                                     " - document.documentElement.clientWidth")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"charts": charts, "errors": errors, "overflow": overflow}


@pytest.mark.parametrize(("name", "at_least"), [("run", 5), ("validate", 15), ("sweep", 3)])
def test_every_chart_of_the_page_is_drawn_with_data(folders, name, at_least):
    got = open_report(folders[name])
    assert got["errors"] == []
    charts = got["charts"]
    assert len(charts) >= at_least
    for chart in charts:
        assert chart["plotted"] and chart["traces"] >= 1 and chart["points"] >= 1, chart
        assert chart["svg"] or chart["gl"], chart
    assert got["overflow"] == 0


def test_a_timeline_of_thousands_of_ops_is_drawn_with_webgl(tmp_path):
    require_chromium()
    from sim.report.files import Span
    from sim.report.html import page, timeline_chart
    from sim.report.plot import GL_THRESHOLD

    spans = [Span("gpu" if i % 3 else "cpu", i * 1e-3, 6e-4, ("decode", "prefill")[i % 2 == 0])
             for i in range(3 * GL_THRESHOLD)]
    (tmp_path / "report.html").write_text(page("many ops", "", [timeline_chart(spans, "t")]))
    got = open_report(tmp_path / "report.html")
    assert got["errors"] == []
    [chart] = got["charts"]
    assert chart["gl"] and chart["points"] == 3 * len(spans)  # start, end, gap per op
