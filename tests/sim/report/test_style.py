"""One colour per meaning across the product: the live dashboard's ``COLORS``
(adapters/serving/static/dashboard.html) are the report's (``sim.report.style``) for the
meanings both show; each report page colours a meaning the same on every chart."""

from __future__ import annotations

import re
from pathlib import Path

from sim.report import style
from tests.sim.report import pages

DASHBOARD = (Path(__file__).resolve().parents[3] / "adapters" / "serving" / "static"
             / "dashboard.html")


def _dashboard_colors() -> dict[str, dict[str, str]]:
    js = DASHBOARD.read_text()
    block = js[js.index("const COLORS = {"):]
    block = block[:block.index("};")]
    out = {}
    for group, body in re.findall(r"(\w+): \{([^}]*)\}", block):
        out[group] = dict(re.findall(r'(\w+): "(#[0-9a-fA-F]{6})"', body))
    return out


def test_the_dashboard_uses_the_report_palette():
    colors = _dashboard_colors()
    assert colors["op"] == {k: v for k, v in style.OPS.items() if k in colors["op"]}
    assert set(colors["op"]) >= {"prefill", "decode", "verify", "draft", "retier"}
    assert colors["precision"] == {k: style.PRECISIONS[k] for k in colors["precision"]}
    for metric, name in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E")):
        assert colors["metric"][metric] == style.TIMES[name]


def test_an_op_has_one_colour_on_every_chart_of_a_page(tmp_path):
    from sim.report.files import Span
    from sim.report.html import page, timeline_chart

    a = [Span("cpu", 0, 1, "prefill"), Span("cpu", 1, 1, "decode")]
    b = [Span("gpu", 0, 1, "decode"), Span("gpu", 1, 1, "verify")]  # other ops, other order
    html = page("t", "", [timeline_chart(a, "a"), timeline_chart(b, "b")])
    seen: dict[str, set[str]] = {}
    for fig in pages.figures(html):
        for t in fig["data"]:
            seen.setdefault(t["name"], set()).add(t["marker"]["color"])
    assert seen == {"prefill": {style.OPS["prefill"]}, "decode": {style.OPS["decode"]},
                    "verify": {style.OPS["verify"]}}
