"""Plotly charts for the ``infer-os report`` pages (the live dashboard of ``infer-os serve`` draws
with the same plotly.js, from the same Python package).

A chart is a Plotly figure (a dict of ``data`` and ``layout``) written into the page as a
``<div class="chart">`` followed by its figure as JSON (``<script type="application/json">``);
``PAGE_SCRIPT`` draws every chart with ``Plotly.newPlot`` once plotly.js, inlined once per page
by ``plotly_js()``, has loaded.  Nothing is fetched: the page works offline.

Builders return figures: ``scatter_fig`` (optionally with the y = x line), ``bar_fig`` (grouped),
``line_fig`` (steps, optionally stacked), ``box_fig`` and ``timeline_fig`` (one lane per device,
every op; WebGL beyond ``GL_THRESHOLD`` ops).  Callers scale values to display units first
(``sim.report.fmt``) and name the unit in the axis title; hovers carry formatted text.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from sim.errors import UserError
from sim.report import style

GL_THRESHOLD = 1000  # marks per chart beyond which traces are drawn with WebGL (scattergl)
CONFIG = {"responsive": True, "displaylogo": False, "scrollZoom": False,
          "modeBarButtonsToRemove": ["select2d", "lasso2d"]}

PAGE_SCRIPT = """
(function () {
  "use strict";
  function draw(div) {
    var fig = JSON.parse(div.nextElementSibling.textContent);
    try {
      Plotly.newPlot(div, fig.data, fig.layout, fig.config);
    } catch (err) {
      console.error("chart " + (div.dataset.title || "") + ": " + err);
    }
  }
  var charts = document.querySelectorAll("div.chart");
  for (var i = 0; i < charts.length; i++) draw(charts[i]);
  // a chart drawn inside a closed <details> has no width yet: fit it when it opens
  document.querySelectorAll("details").forEach(function (d) {
    d.addEventListener("toggle", function () {
      if (!d.open) return;
      d.querySelectorAll("div.js-plotly-plot").forEach(function (c) { Plotly.Plots.resize(c); });
    });
  });
  window.reportCharts = charts.length;
})();
"""


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The minified plotly.js of the installed ``plotly`` package (inlined once per page)."""
    try:
        import plotly
    except ImportError:
        raise UserError("`infer-os report` draws with Plotly, which is not installed here: "
                        "pip install 'plotly>=6.0,<8'") from None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path.read_text(encoding="utf-8").replace("</script", "<\\/script")


def _clean(x):
    """JSON-safe: NaN and infinities as null (Plotly draws a gap)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def chart(fig: dict, caption: str = "") -> str:
    """One chart's HTML: its div, its figure as JSON and an optional caption (escaped)."""
    fig = {"data": fig["data"], "layout": fig["layout"], "config": CONFIG}
    data = json.dumps(_clean(fig), separators=(",", ":"), allow_nan=False)
    data = data.replace("</", "<\\/").replace("<!--", "<\\!--")
    title = fig["layout"].get("title", {}).get("text", "")
    cap = f'<figcaption class="note">{html.escape(caption)}</figcaption>' if caption else ""
    return (f'<figure><div class="chart" data-title="{html.escape(title)}"></div>'
            f'<script type="application/json" class="figure">{data}</script>{cap}</figure>')


# -- layout -----------------------------------------------------------------------------------

def axis(title: str, *, tozero: bool = False, log: bool = False, **extra) -> dict:
    """An axis; ``tozero``: a non-negative quantity, the axis starts at 0."""
    out = {"title": {"text": title}, "gridcolor": "#eef0f2", "zeroline": False,
           "automargin": True}
    if log:
        out.update(type="log", dtick=1)  # a tick per decade
    elif tozero:
        out["rangemode"] = "tozero"
    out.update(extra)
    return out


def layout(title: str, x: dict, y: dict, *, height: int = 360, legend: bool = True,
           **extra) -> dict:
    """A chart's layout: the title at the top, the legend (one or two rows) under it."""
    out = {"title": {"text": title, "font": {"size": 14}, "x": 0, "xanchor": "left",
                     "xref": "paper", "y": 1, "yref": "container", "yanchor": "top",
                     "pad": {"t": 8}},
           "xaxis": x, "yaxis": y, "height": height, "autosize": True,
           "margin": {"l": 60, "r": 16, "t": 90 if legend else 40, "b": 48},
           "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#222"},
           "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff", "hovermode": "closest",
           "showlegend": legend,
           "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02,
                      "yanchor": "bottom", "font": {"size": 11}}}
    out.update(extra)
    return out


def _kind(n: int) -> str:
    return "scattergl" if n > GL_THRESHOLD else "scatter"


# -- figures ----------------------------------------------------------------------------------

def points(name: str, xs: Sequence, ys: Sequence, hover: Sequence[str], color: str,
           marker: dict | None = None, gl: bool = False) -> dict:
    """One scatter trace of markers, each with its hover text."""
    return {"type": "scattergl" if gl else "scatter", "mode": "markers", "name": name,
            "x": list(xs), "y": list(ys), "text": list(hover), "hoverinfo": "text",
            "marker": {"color": color, "size": 8, **(marker or {})}}


def identity(lo: float, hi: float) -> dict:
    """The dashed y = x line from ``lo`` to ``hi``."""
    return {"type": "scatter", "mode": "lines", "name": "y = x (exact)", "x": [lo, hi],
            "y": [lo, hi], "hoverinfo": "skip", "showlegend": False,
            "line": {"color": style.IDENTITY, "dash": "dash", "width": 1}}


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def is_wide(values: Sequence[float]) -> bool:
    """Positive values spanning more than 30x: drawn on log axes."""
    pos = [v for v in _finite(values) if v > 0]
    return bool(pos) and max(pos) > 30 * min(pos)


def scatter_fig(traces: list[dict], *, title: str, x_title: str, y_title: str,
                diagonal: bool = False, height: int = 360, tozero: bool = True) -> dict:
    """Scatter traces on axes that start at 0 (``tozero``); ``diagonal``: both axes share one
    range and the y = x line is drawn (on log axes when the values span more than 30x)."""
    values = [v for t in traces for v in (*t["x"], *t["y"])]
    log = diagonal and is_wide(values)
    data = list(traces)
    x, y = axis(x_title, tozero=tozero, log=log), axis(y_title, tozero=tozero, log=log)
    if diagonal and _finite(values):
        vals = _finite(values)
        lo = min(v for v in vals if v > 0) / 1.5 if log else 0.0
        hi = max(vals) * (1.5 if log else 1.08) or 1.0
        data.insert(0, identity(lo, hi))
        rng = [math.log10(lo), math.log10(hi)] if log else [lo, hi]
        x.update(range=rng)
        y.update(range=rng)
        if log:
            title += " (log)"
    return {"data": data, "layout": layout(title, x, y, height=height)}


def bar_fig(categories: Sequence[str], series: Sequence[tuple[str, Sequence, Sequence[str]]],
            colors: dict[str, str], *, title: str, y_title: str, signed: bool = False,
            clip: float | None = None, height: int = 340) -> dict:
    """Grouped bars: one group per category, one bar per series (name, values, hover texts);
    ``signed``: the axis shows 0 and values below it; ``clip``: the axis stops at +-``clip``
    (a bar beyond keeps its value in its hover and its label)."""
    data = []
    for name, values, hover in series:
        data.append({"type": "bar", "name": name, "x": list(categories), "y": list(values),
                     "text": list(hover), "hoverinfo": "text", "textposition": "none",
                     "marker": {"color": colors.get(name, style.OTHER)}})
    y = axis(y_title, tozero=not signed)
    if signed:
        y.update(zeroline=True, zerolinecolor=style.ZERO, zerolinewidth=1)
    vals = _finite(v for _, vs, _ in series for v in vs)
    if clip is not None and vals and max(abs(v) for v in vals) > clip:
        y.update(range=[max(min(vals) * 1.1, -clip), min(max(vals) * 1.1, clip)])
    return {"data": data, "layout": layout(title, axis(""), y, height=height, barmode="group")}


def line_fig(xs: Sequence[float], series: Sequence[tuple[str, Sequence[float]]],
             colors: dict[str, str], *, title: str, x_title: str, y_title: str,
             hover: Sequence[str] | None = None, stacked: bool = False,
             height: int = 300) -> dict:
    """Step lines (the value holds until the next point) over shared ``xs``; ``stacked``:
    filled areas on top of each other.  ``hover``: one text per x, shown on the top trace."""
    data = []
    for i, (name, ys) in enumerate(series):
        trace = {"type": _kind(len(xs)) if not stacked else "scatter", "mode": "lines",
                 "name": name, "x": list(xs), "y": list(ys),
                 "line": {"shape": "hv", "width": 1.5, "color": colors.get(name, style.OTHER)},
                 "hoverinfo": "skip"}
        if stacked:
            trace.update(stackgroup="stack", fillcolor=colors.get(name, style.OTHER))
        if hover is not None and i == len(series) - 1:
            trace.update(text=list(hover), hoverinfo="text")
        elif hover is None:
            trace.update(hoverinfo="x+y+name")
        data.append(trace)
    return {"data": data, "layout": layout(title, axis(x_title, tozero=True),
                                           axis(y_title, tozero=True), height=height,
                                           hovermode="x" if hover is not None else "closest")}


def box_fig(groups: Sequence[tuple[str, str, Sequence[float], Sequence[str]]],
            colors: dict[str, str], *, title: str, y_title: str, height: int = 340,
            max_points: int = 2000) -> dict:
    """Box plots of signed values: ``groups`` are (series name, category, values, hover texts);
    one trace per series (its colour, its legend entry), its boxes side by side with the other
    series' in each category.  Every value is a dot up to ``max_points`` per series; beyond,
    only the outliers."""
    merged: dict[str, dict] = {}
    for name, category, values, hover in groups:
        color = colors.get(name, style.OTHER)
        trace = merged.setdefault(name, {
            "type": "box", "name": name, "x": [], "y": [], "text": [],
            "hoverinfo": "text+y", "boxpoints": "all", "jitter": 0.4, "pointpos": 0,
            "marker": {"color": color, "size": 4, "opacity": 0.6},
            "line": {"color": color, "width": 1.5}})
        trace["x"] += [category] * len(values)
        trace["y"] += list(values)
        trace["text"] += list(hover)
    for trace in merged.values():
        if len(trace["y"]) > max_points:
            trace["boxpoints"] = "outliers"
    y = axis(y_title, zeroline=True, zerolinecolor=style.ZERO, zerolinewidth=1)
    return {"data": list(merged.values()),
            "layout": layout(title, axis(""), y, height=height, boxmode="group")}


def timeline_fig(spans: Sequence, *, title: str, time_factor: float, time_title: str,
                 x_max: float | None = None, unit: str = "") -> dict:
    """A Gantt chart of every span (``lane``, ``start``, ``duration`` in s, ``key``, ``note``):
    one lane per device, one trace per op kind coloured by ``style.OPS``.  Up to
    ``GL_THRESHOLD`` spans are bars; beyond, each op is a thick WebGL line segment.  Zoom with
    a drag, pan with shift-drag or the mode bar, double-click to reset."""
    lanes = list(dict.fromkeys(s.lane for s in spans)) or [""]
    keys = list(dict.fromkeys(s.key for s in spans))
    keys = [k for k in style.OPS if k in keys] + [k for k in keys if k not in style.OPS]
    gl = len(spans) > GL_THRESHOLD
    data = []
    for key in keys:
        mine = [s for s in spans if s.key == key]
        tips = [f"{key} on {s.lane}: {s.duration * time_factor:.4g} {unit} from "
                f"{s.start * time_factor:.6g} {unit}" + (f" ({s.note})" if s.note else "")
                for s in mine]
        color = style.op_color(key)
        if gl:
            xs, ys, text = [], [], []
            for s, tip in zip(mine, tips):
                end = (s.start + max(s.duration, 0.0)) * time_factor
                xs += [s.start * time_factor, end, None]
                ys += [s.lane, s.lane, None]
                text += [tip, tip, ""]
            data.append({"type": "scattergl", "mode": "lines", "name": key, "x": xs, "y": ys,
                         "text": text, "hoverinfo": "text", "connectgaps": False,
                         "line": {"color": color, "width": 14}})
        else:
            data.append({"type": "bar", "orientation": "h", "name": key,
                         "y": [s.lane for s in mine],
                         "x": [max(s.duration, 0.0) * time_factor for s in mine],
                         "base": [s.start * time_factor for s in mine], "text": tips,
                         "hoverinfo": "text", "textposition": "none", "width": 0.6,
                         "marker": {"color": color, "line": {"width": 0}}})
    end = x_max if x_max is not None else max((s.start + s.duration for s in spans),
                                              default=1.0)
    x = axis(time_title, range=[0, (end or 1.0) * time_factor])
    y = axis("", type="category", categoryorder="array", categoryarray=lanes[::-1],
             gridcolor="rgba(0,0,0,0)", tickvals=lanes,  # a lane is marked in its device's colour
             ticktext=[f"<span style='color:{style.device_color(lane)}'>\u25a0</span> "
                       f"{html.escape(lane)}" for lane in lanes])
    fig = {"data": data, "layout": layout(title, x, y, height=150 + 34 * len(lanes),
                                          barmode="overlay", dragmode="zoom")}
    fig["layout"]["margin"]["l"] = 40 + 8 * max(len(lane) for lane in lanes)
    return fig
