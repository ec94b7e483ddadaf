"""The live dashboard page of ``infer-os serve`` (adapters/serving/static/dashboard.html), opened
in headless Chromium against a tiny in-test server: it loads plotly.js from /static, polls
/api/dashboard, draws every chart without a console error, and fits the page's width."""

from __future__ import annotations

import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.serving.dashboard_browser import CHART_IDS, open_dashboard, require_chromium

PAGE = Path(__file__).resolve().parents[3] / "adapters" / "serving" / "static" / "dashboard.html"
OPS = ("prefill", "decode", "verify", "draft", "retier", "alloc", "slow")


def _payload(calls: int) -> dict[str, Any]:
    """A dashboard snapshot that grows with each call: ``calls`` seconds of uptime."""
    uptime = 20.0 + calls
    t = [round(0.5 * i, 1) for i in range(1, int(uptime / 0.5) + 1)]
    tok_s = [round(40 + 15 * math.sin(x / 3), 2) for x in t]
    kv = {"fp16": [4e6 + 2e5 * x for x in t], "int8": [1e6 + 1e5 * x for x in t],
          "int4": [5e5 * (x > 5) for x in t], "int2": [0.0 for _ in t],
          "offloaded": [2e5 * x if x > 10 else 0.0 for x in t]}
    acceptance = [None if x < 3 else round(0.6 + 0.2 * math.cos(x / 4), 3) for x in t]
    lt = t[1::2]
    timeline = []
    start = uptime - 10.0
    i = 0
    while start < uptime:
        op = OPS[i % len(OPS)] if i % 5 == 0 else "decode"
        dur = 0.12 if op == "prefill" else 0.045
        timeline.append({"device": "cpu" if i % 3 else "gpu:0", "op": op,
                         "start_s": round(start, 3), "dur_s": dur, "batch": 1 + i % 4})
        start += dur + 0.02
        i += 1
    return {
        "model": "smollm2-135m", "variant": "baseline", "backend": "torch",
        "device": "cpu (2 threads)", "uptime_s": uptime,
        "totals": {"requests": 10 + calls, "completed": 8 + calls, "failed": 1, "running": 1,
                   "waiting": calls % 3, "prompt_tokens": 900 + 90 * calls,
                   "generation_tokens": 400 + 40 * calls},
        "series": {"t": t, "tok_s": tok_s, "running": [1 + int(x) % 3 for x in t],
                   "waiting": [int(x) % 2 for x in t], "kv_bytes": kv, "acceptance": acceptance},
        "latency": {"ttft_ms": {"p50": 120.0, "p90": 300.0, "p99": 350.0},
                    "tpot_ms": {"p50": 40.0, "p90": 50.0, "p99": 60.0},
                    "e2e_ms": {"p50": None, "p90": None, "p99": None}},
        "latency_series": {"t": lt, "ttft_p50_ms": [100 + 2 * x for x in lt],
                           "ttft_p99_ms": [300 + 3 * x for x in lt],
                           "tpot_p50_ms": [40 + (x % 5) for x in lt],
                           "tpot_p99_ms": [None if x < 4 else 60 + (x % 7) for x in lt]},
        "timeline": timeline,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard_url():
    require_chromium()
    plotly = pytest.importorskip("plotly")
    uvicorn = pytest.importorskip("uvicorn")
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    calls = {"n": 0}

    async def index(request):
        return FileResponse(PAGE, media_type="text/html")

    async def plotly_min(request):
        return FileResponse(plotly_js, media_type="application/javascript")

    async def api(request):
        calls["n"] += 1
        return JSONResponse(_payload(calls["n"]))

    app = Starlette(routes=[Route("/", index), Route("/static/plotly.min.js", plotly_min),
                            Route("/api/dashboard", api)])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the in-test dashboard server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def test_dashboard_draws_every_chart(dashboard_url, tmp_path):
    result = open_dashboard(dashboard_url, screenshot=tmp_path / "dashboard.png", min_polls=3,
                            timeout_s=15)
    assert result["console_errors"] == []
    state = result["state"]
    assert state["polls"] >= 3
    for chart in CHART_IDS:
        assert result["plotly_traces"][chart] >= 1, (chart, result["plotly_traces"])
    for chart in ("chart-tok-s", "chart-kv", "chart-timeline", "chart-latency", "chart-queue",
                  "chart-acceptance"):
        assert state["points"][chart] > 0, (chart, state["points"])
    assert result["horizontal_overflow_px"] == 0
    assert (tmp_path / "dashboard.png").stat().st_size > 0
