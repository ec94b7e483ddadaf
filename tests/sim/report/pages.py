"""Reading back an ``infer-os report`` page in tests: its Plotly figures (the JSON after each
``div.chart``), its tables and its text.  A helper, not a test module."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

FIGURE = re.compile(r'<div class="chart" data-title="([^"]*)"></div>'
                    r'<script type="application/json" class="figure">(.*?)</script>', re.S)


def plotly_js() -> str:
    """plotly.js as the page inlines it."""
    from sim.report.plot import plotly_js

    return plotly_js()


def figures(page: str) -> list[dict]:
    """Every chart's figure (``data``, ``layout``, ``config``), in page order."""
    return [json.loads(m.group(2).replace("<\\/", "</")) for m in FIGURE.finditer(page)]


def by_title(page: str) -> dict[str, dict]:
    """Figures by their title (a " (log)" suffix dropped)."""
    out = {}
    for fig in figures(page):
        out[fig["layout"]["title"]["text"].removesuffix(" (log)")] = fig
    return out


def kind(fig: dict) -> str:
    """What a figure draws: "timeline", "kv", "box", "bars" or "scatter"."""
    types = {t["type"] for t in fig["data"]}
    if fig["layout"]["yaxis"].get("type") == "category":
        return "timeline"
    if "box" in types:
        return "box"
    if "bar" in types:
        return "bars"
    if any(t.get("line", {}).get("shape") == "hv" and t.get("mode") == "lines"
           for t in fig["data"]):
        return "kv"
    return "scatter"


def count(page: str, what: str) -> int:
    return sum(1 for f in figures(page) if kind(f) == what)


def timeline_ops(fig: dict) -> list[tuple[str, str, float]]:
    """(lane, op, start in the axis unit) of every op a timeline draws (bars or WebGL lines)."""
    out = []
    for t in fig["data"]:
        if t["type"] == "bar":
            out += [(lane, t["name"], start) for lane, start in zip(t["y"], t["base"])]
        else:
            out += [(t["y"][i], t["name"], t["x"][i]) for i in range(0, len(t["x"]), 3)]
    return out


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.rows: list[list[str]] = []
        self.skip = 0
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip -= 1
        elif tag in ("td", "th") and self.cell is not None and self.rows:
            self.rows[-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)
            if self.cell is not None:
                self.cell.append(data)


def text(page: str) -> str:
    """The page's visible text (no scripts or styles)."""
    parser = _Text()
    parser.feed(page)
    return "".join(parser.parts)


def rows(page: str) -> list[list[str]]:
    """Every table row's cells as text, header rows included, in page order."""
    parser = _Text()
    parser.feed(page)
    return parser.rows


def title(page: str) -> str:
    return re.search(r"<title>(.*?)</title>", page, re.S).group(1)


def headings(page: str, level: int = 2) -> list[str]:
    return re.findall(rf"<h{level}>(.*?)</h{level}>", page)


def as_measured(folder: Path, variant: str) -> None:
    """A simulate folder's run files of ``variant`` copied as its measured side (the files a
    validate folder holds), so a simulate run can stand in for a validation in tests."""
    stem = f"{variant}.roofline"
    for kind in ("trace.{}.json", "kv.{}.csv", "requests.{}.csv"):
        shutil.copy(folder / kind.format(stem), folder / kind.format(f"{variant}.measured"))
