"""Small inline-SVG charts for self-contained HTML reports: no dependencies, no JavaScript.

Every function returns one ``<svg>`` element as a string (well-formed XML, text escaped) that reads
offline in any browser.  The caller converts data to display units first (ms, MB, %) and names the
unit in the axis label; ticks are "nice" (1, 2, 5 x 10^k).  Every mark carries its data for readers
of the source and for tests: points ``data-x``/``data-y``, bars ``data-value``, histogram bins
``data-count``, Gantt spans ``data-start``/``data-duration``, line series ``data-points``
("x,y x,y ..." in display units) -- and a ``<title>`` tooltip a browser shows on hover.

API: ``scatter`` (optionally with the y = x line, or connecting each series' points, e.g. a
Pareto front), ``lines`` (steps or straight segments, optionally stacked areas), ``bars``
(grouped, signed), ``histogram`` (overlaid series on shared bins), ``gantt`` (one lane per
device, a colour per op); helpers ``escape``, ``nice_ticks``, ``fmt_num``, ``color_map``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Okabe-Ito, then Tableau: distinguishable by colour-blind readers first
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000", "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF")
FONT = 'font-family="system-ui, sans-serif" font-size="12"'
CHAR_W = 7.0  # approximate width of one 12 px character, for layout


@dataclass(frozen=True)
class Series:
    """One named set of points; ``labels`` (optional) are per-point tooltips."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    labels: Sequence[str] | None = None


@dataclass(frozen=True)
class Span:
    """One Gantt bar: ``key`` picks its colour (the op); ``note`` adds to its tooltip."""

    lane: str
    start: float
    duration: float
    key: str
    note: str = ""


def escape(text: object) -> str:
    """Text safe inside XML/HTML elements and double-quoted attributes."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def fmt_num(x: float) -> str:
    """A short readable number: 0.0125, 3.5, 1,250, 2.5e-05."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    return f"{x:.4g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Ticks at multiples of 1, 2 or 5 x 10^k covering [lo, hi] (the first <= lo, the last
    >= hi), about ``target`` intervals."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.5 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [float(f"{i * step:.12g}") for i in range(first, last + 1)]


def color_map(keys: Sequence[str]) -> dict[str, str]:
    """A stable colour per distinct key, in order of first appearance."""
    out: dict[str, str] = {}
    for key in keys:
        if key not in out:
            out[key] = PALETTE[len(out) % len(PALETTE)]
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten covering [lo, hi] (both > 0), with 2 and 5 between them over at most two
    decades; the first tick <= lo, the last >= hi."""
    a, b = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    b = max(b, a + 1)
    mults = (1, 2, 5) if b - a <= 2 else (1,)
    ticks = [float(f"{m * 10.0 ** k:.12g}") for k in range(a, b) for m in mults] + [10.0 ** b]
    first = max(i for i, t in enumerate(ticks) if t <= lo * (1 + 1e-9))
    last = min(i for i, t in enumerate(ticks) if t >= hi * (1 - 1e-9))
    return ticks[first:last + 1]


class _Frame:
    """A plot area with linear (or log10) x and y scales, axes, a title and a legend; collects
    elements."""

    def __init__(self, width: int, height: int, x_ticks: list[float] | None,
                 y_ticks: list[float], *, title: str, legend: dict[str, str],
                 left: float = 64, bottom: float = 44,
                 x_domain: tuple[float, float] | None = None, log: bool = False):
        self.width, self.height, self.log = width, height, log
        # room for the longest y tick label and the rotated y-axis label
        left = max(left, 28 + CHAR_W * max((len(fmt_num(t)) for t in y_ticks), default=1))
        # the x range drawn: the outer ticks, or exactly the data's (time axes) with the ticks
        # that fall inside it
        self.x_domain = x_domain or ((x_ticks[0], x_ticks[-1]) if x_ticks else (0.0, 1.0))
        if x_domain and x_ticks:
            x_ticks = [t for t in x_ticks if x_domain[0] - 1e-9 <= t <= x_domain[1] + 1e-9]
        self.parts: list[str] = []
        rows = self._legend_rows(legend, width - left - 16)
        top = 12 + (18 if title else 0) + 16 * len(rows)
        self.x0, self.x1, self.y0, self.y1 = left, width - 28, height - bottom, top + 6
        self.x_ticks, self.y_ticks = x_ticks, y_ticks
        if title:
            self.parts.append(f'<text x="{left}" y="18" font-weight="bold">{escape(title)}</text>')
        y = 12 + (18 if title else 0)
        for row in rows:
            x = left
            for name in row:
                self.parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" '
                                  f'fill="{legend[name]}"/><text x="{x + 14}" y="{y}">'
                                  f"{escape(name)}</text>")
                x += 24 + CHAR_W * len(name)
            y += 16

    @staticmethod
    def _legend_rows(legend: dict[str, str], width: float) -> list[list[str]]:
        rows: list[list[str]] = []
        used = width + 1
        for name in legend:
            w = 24 + CHAR_W * len(name)
            if used + w > width:
                rows.append([])
                used = 0.0
            rows[-1].append(name)
            used += w
        return rows

    def _frac(self, v: float, lo: float, hi: float) -> float:
        if self.log:
            v, lo, hi = math.log10(v), math.log10(lo), math.log10(hi)
        return (v - lo) / (hi - lo)

    def sx(self, x: float) -> float:
        return round(self.x0 + self._frac(x, *self.x_domain) * (self.x1 - self.x0), 2)

    def sy(self, y: float) -> float:
        frac = self._frac(y, self.y_ticks[0], self.y_ticks[-1])
        return round(self.y0 - frac * (self.y0 - self.y1), 2)

    def axes(self, x_label: str, y_label: str) -> None:
        p = self.parts
        for t in self.y_ticks:
            y = self.sy(t)
            p.append(f'<line x1="{self.x0}" x2="{self.x1}" y1="{y}" y2="{y}" stroke="#e3e3e3"/>'
                     f'<text x="{self.x0 - 6}" y="{y + 4}" text-anchor="end">{fmt_num(t)}</text>')
        for t in self.x_ticks or []:
            x = self.sx(t)
            p.append(f'<line x1="{x}" x2="{x}" y1="{self.y0}" y2="{self.y0 + 4}" stroke="#555"/>'
                     f'<text x="{x}" y="{self.y0 + 17}" text-anchor="middle">{fmt_num(t)}</text>')
        p.append(f'<path d="M{self.x0},{self.y1} V{self.y0} H{self.x1}" fill="none" '
                 f'stroke="#555"/>')
        p.append(f'<text x="{(self.x0 + self.x1) / 2}" y="{self.height - 8}" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
        mid = (self.y0 + self.y1) / 2
        p.append(f'<text transform="translate(14,{mid}) rotate(-90)" text-anchor="middle">'
                 f"{escape(y_label)}</text>")

    def svg(self, css_class: str) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{css_class}" '
                f'width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" {FONT}>'
                + "".join(self.parts) + "</svg>")


def _padded(lo: float, hi: float, frac: float = 0.06) -> tuple[float, float]:
    """The range widened by ``frac`` on each side that has data (0 stays 0): no mark sits on
    the frame."""
    pad = (hi - lo) * frac
    return (lo - pad if lo != 0 else lo), (hi + pad if hi != 0 else hi)


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def scatter(series: Sequence[Series], *, x_label: str, y_label: str, title: str = "",
            diagonal: bool = False, connect: bool = False, log: bool = False, width: int = 420,
            height: int = 340) -> str:
    """Points per series.  ``diagonal``: both axes share one range (from 0 unless ``log``) and
    the y = x line is drawn (points above it have y > x).  ``connect``: join each series' points
    in x order.  ``log``: log10 axes (points <= 0 are left out)."""
    keep = (lambda v: v > 0) if log else (lambda v: True)
    xs = [x for x in _finite(x for s in series for x in s.xs) if keep(x)] or [1.0]
    ys = [y for y in _finite(y for s in series for y in s.ys) if keep(y)] or [1.0]
    if log:
        ticks = log_ticks(min(*xs, *ys), max(*xs, *ys)) if diagonal else []
        x_ticks = ticks or log_ticks(min(xs), max(xs))
        y_ticks = ticks or log_ticks(min(ys), max(ys))
    elif diagonal:
        ticks = nice_ticks(*_padded(min(0.0, *xs, *ys), max(*xs, *ys)))
        x_ticks = y_ticks = ticks
    else:
        x_ticks = nice_ticks(*_padded(min(xs), max(xs)))
        y_ticks = nice_ticks(*_padded(min(ys), max(ys)))
    colors = color_map([s.name for s in series])
    f = _Frame(width, height, x_ticks, y_ticks, title=title, legend=colors, log=log)
    f.axes(x_label, y_label)
    if diagonal:
        a, b = x_ticks[0], x_ticks[-1]
        f.parts.append(f'<line class="identity" x1="{f.sx(a)}" y1="{f.sy(a)}" x2="{f.sx(b)}" '
                       f'y2="{f.sy(b)}" stroke="#999" stroke-dasharray="4 3">'
                       "<title>y = x (perfect prediction)</title></line>")
    for s in series:
        pts = [(x, y, i) for i, (x, y) in enumerate(zip(s.xs, s.ys))
               if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
               and keep(x) and keep(y)]
        if connect and len(pts) > 1:
            d = " ".join(f"{f.sx(x)},{f.sy(y)}" for x, y, _ in sorted(pts))
            f.parts.append(f'<polyline points="{d}" fill="none" stroke="{colors[s.name]}"/>')
        for x, y, i in pts:
            tip = s.labels[i] if s.labels else f"{s.name}: ({fmt_num(x)}, {fmt_num(y)})"
            f.parts.append(f'<circle class="point" cx="{f.sx(x)}" cy="{f.sy(y)}" r="4" '
                           f'fill="{colors[s.name]}" data-series="{escape(s.name)}" '
                           f'data-x="{x:.6g}" data-y="{y:.6g}"><title>{escape(tip)}</title>'
                           "</circle>")
    return f.svg("scatter")


def lines(series: Sequence[Series], *, x_label: str, y_label: str, title: str = "",
          stacked: bool = False, step: bool = True, width: int = 640, height: int = 300) -> str:
    """One line per series (x ascending); ``step``: the value holds until the next point;
    ``stacked``: filled areas on top of each other (all series must share ``xs``)."""
    xs = _finite(x for s in series for x in s.xs) or [0.0]
    base = [0.0] * max((len(s.xs) for s in series), default=0)
    tops: list[list[float]] = []
    for s in series:
        top = [b + y for b, y in zip(base, s.ys)] if stacked else [float(y) for y in s.ys]
        tops.append(top)
        if stacked:
            base = top
    ys = _finite(y for t in tops for y in t) or [0.0]
    colors = color_map([s.name for s in series])
    f = _Frame(width, height, nice_ticks(min(xs), max(xs)), nice_ticks(min(0.0, *ys), max(ys)),
               title=title, legend=colors,
               x_domain=(min(xs), max(xs)) if max(xs) > min(xs) else None)
    f.axes(x_label, y_label)
    below = [0.0] * len(base)
    for s, top in zip(series, tops):
        line = _path(f, list(s.xs), top, step)
        data = " ".join(f"{x:.6g},{y:.6g}" for x, y in zip(s.xs, s.ys))
        attrs = f'class="series" data-series="{escape(s.name)}" data-points="{data}"'
        if stacked:
            back = _path(f, list(s.xs)[::-1], below[: len(s.xs)][::-1], step, reverse=True)
            f.parts.append(f'<path {attrs} d="{line} {back.replace("M", "L", 1)} Z" '
                           f'fill="{colors[s.name]}" fill-opacity="0.75" stroke="none">'
                           f"<title>{escape(s.name)}</title></path>")
            below = top
        else:
            f.parts.append(f'<path {attrs} d="{line}" fill="none" stroke="{colors[s.name]}" '
                           f'stroke-width="1.5"><title>{escape(s.name)}</title></path>')
    return f.svg("lines")


def _path(f: _Frame, xs: list[float], ys: list[float], step: bool, reverse: bool = False) -> str:
    cmds: list[str] = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        if i and step:  # horizontal first going forward; vertical first coming back
            cmds.append(f"H{f.sx(x)}" if not reverse else f"V{f.sy(y)}")
            cmds.append(f"V{f.sy(y)}" if not reverse else f"H{f.sx(x)}")
        else:
            cmds.append(f"{'L' if i else 'M'}{f.sx(x)},{f.sy(y)}")
    return " ".join(cmds) or f"M{f.x0},{f.y0}"


def bars(categories: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *,
         y_label: str, title: str = "", value_fmt: str = "{:.3g}",
         clip: tuple[float, float] | None = None, width: int = 640, height: int = 300) -> str:
    """Grouped bars: one group per category, one bar per series within it (``None``: no bar,
    "n/a" written).  Negative values hang below the zero line; values are written on the bars.
    ``clip`` (lo, hi): the axis stops there; a bar beyond is cut (a white break near its end)
    and keeps its true value written on it."""
    vals = _finite(v for _, vs in series for v in vs) or [0.0]
    if clip:
        vals = [min(max(v, clip[0]), clip[1]) for v in vals]
    y_ticks = nice_ticks(*_padded(min(0.0, *vals), max(0.0, *vals), 0.1))
    colors = color_map([name for name, _ in series])
    f = _Frame(width, height, None, y_ticks, title=title, legend=colors)
    f.axes("", y_label)
    group_w = (f.x1 - f.x0) / max(len(categories), 1)
    bar_w = min(group_w * 0.8 / max(len(series), 1), 60.0)
    inset = (group_w - bar_w * len(series)) / 2  # the group's bars centred under its label
    zero = f.sy(0.0)
    for g, cat in enumerate(categories):
        gx = f.x0 + g * group_w
        f.parts.append(f'<text x="{round(gx + group_w / 2, 2)}" y="{f.y0 + 17}" '
                       f'text-anchor="middle">{escape(cat)}</text>')
        for k, (name, values) in enumerate(series):
            v = values[g] if g < len(values) else None
            x = round(gx + inset + k * bar_w, 2)
            if v is None or not math.isfinite(v):
                f.parts.append(f'<text x="{x + bar_w / 2:.2f}" y="{zero - 3}" font-size="9" '
                               f'text-anchor="middle" fill="#888">n/a</text>')
                continue
            shown = min(max(v, clip[0]), clip[1]) if clip else v
            y = f.sy(shown)
            text = value_fmt.format(v)
            f.parts.append(f'<rect class="bar" x="{x}" y="{min(y, zero)}" width="{bar_w:.2f}" '
                           f'height="{abs(zero - y):.2f}" fill="{colors[name]}" '
                           f'data-series="{escape(name)}" data-category="{escape(cat)}" '
                           f'data-value="{v:.6g}"><title>{escape(f"{name}, {cat}: {text}")}'
                           "</title></rect>")
            if shown != v:  # cut: a break across the bar, 8 px from its end
                by = y + 8 if v > 0 else y - 8
                f.parts.append(f'<line x1="{x - 1}" x2="{x + bar_w + 1:.2f}" y1="{by + 2}" '
                               f'y2="{by - 2}" stroke="white" stroke-width="3"/>')
            cx = round(x + bar_w / 2, 2)
            if len(text) * 6 <= bar_w + 4:
                ty = y - 3 if v >= 0 else y + 11
                f.parts.append(f'<text x="{cx}" y="{ty}" font-size="10" '
                               f'text-anchor="middle">{escape(text)}</text>')
            else:  # wider than its bar: written along it, inside when it is long enough
                inside = abs(zero - y) >= len(text) * 6 + 16
                up = (v >= 0) != inside  # the text runs up from its anchor
                ty = y + (16 if inside else -3) * (1 if v >= 0 else -1)
                fill = ' fill="white"' if inside else ""
                f.parts.append(f'<text transform="translate({cx + 3},{ty}) rotate(-90)" '
                               f'font-size="10" text-anchor="{"start" if up else "end"}"{fill}>'
                               f"{escape(text)}</text>")
    f.parts.append(f'<line x1="{f.x0}" x2="{f.x1}" y1="{zero}" y2="{zero}" stroke="#555"/>')
    return f.svg("bars")


def histogram(series: Sequence[tuple[str, Sequence[float]]], *, x_label: str, title: str = "",
              bins: int = 20, width: int = 640, height: int = 280) -> str:
    """Counts of each series' values on shared bins, overlaid half-transparent."""
    vals = _finite(v for _, vs in series for v in vs) or [0.0]
    lo, hi = min(vals), max(vals)
    if hi == lo:
        lo, hi = lo - (abs(lo) * 0.05 or 0.5), hi + (abs(hi) * 0.05 or 0.5)
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    counts = []
    for _, vs in series:
        c = [0] * bins
        for v in _finite(vs):
            c[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
        counts.append(c)
    colors = color_map([name for name, _ in series])
    f = _Frame(width, height, nice_ticks(lo, hi),
               nice_ticks(0, max([4, *(max(c) for c in counts)])), title=title,  # whole counts
               legend=colors)
    f.axes(x_label, "requests")
    for (name, _), c in zip(series, counts):
        for i, n in enumerate(c):
            if n:
                x, w = f.sx(edges[i]), f.sx(edges[i + 1]) - f.sx(edges[i])
                f.parts.append(
                    f'<rect class="bin" x="{x}" y="{f.sy(n)}" width="{max(w - 1, 0.5):.2f}" '
                    f'height="{f.y0 - f.sy(n):.2f}" fill="{colors[name]}" fill-opacity="0.6" '
                    f'data-series="{escape(name)}" data-count="{n}" data-lo="{edges[i]:.6g}" '
                    f'data-hi="{edges[i + 1]:.6g}"><title>{escape(name)}: {n} in '
                    f"[{fmt_num(edges[i])}, {fmt_num(edges[i + 1])})</title></rect>")
    return f.svg("histogram")


def gantt(spans: Sequence[Span], *, x_label: str, title: str = "",
          colors: dict[str, str] | None = None, x_max: float | None = None, unit: str = "",
          width: int = 900, lane_h: int = 22) -> str:
    """One lane per distinct ``lane`` (in order of appearance), one bar per span coloured by its
    ``key`` (``colors`` fixes the mapping, e.g. shared across charts); bars at least 0.5 px wide so
    short ops stay visible.  ``x_max`` fixes the axis end (to compare charts); ``unit`` names
    the time unit in tooltips."""
    lanes = list(dict.fromkeys(s.lane for s in spans)) or [""]
    colors = colors or color_map([s.key for s in spans])
    used = {k: c for k, c in colors.items() if any(s.key == k for s in spans)}
    end = x_max if x_max is not None else max((s.start + s.duration for s in spans), default=1.0)
    left = max(64, 12 + CHAR_W * max(len(n) for n in lanes))
    legend_h = 16 * len(_Frame._legend_rows(used, width - left - 16))
    height = int(12 + (18 if title else 0) + legend_h + 6 + lane_h * len(lanes) + 44)
    f = _Frame(width, height, nice_ticks(0.0, end or 1.0), [0.0, float(len(lanes))],
               title=title, legend=used, left=left, x_domain=(0.0, end or 1.0))
    f.y_ticks = [0.0, float(len(lanes))]
    for i, name in enumerate(lanes):
        y = f.sy(len(lanes) - i - 0.5)
        f.parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{escape(name)}</text>')
    f.parts.append(f'<path d="M{f.x0},{f.y1} V{f.y0} H{f.x1}" fill="none" stroke="#555"/>')
    for t in f.x_ticks or []:
        x = f.sx(t)
        f.parts.append(f'<line x1="{x}" x2="{x}" y1="{f.y1}" y2="{f.y0 + 4}" stroke="#e3e3e3"/>'
                       f'<text x="{x}" y="{f.y0 + 17}" text-anchor="middle">{fmt_num(t)}</text>')
    f.parts.append(f'<text x="{(f.x0 + f.x1) / 2}" y="{height - 8}" text-anchor="middle">'
                   f"{escape(x_label)}</text>")
    index = {name: i for i, name in enumerate(lanes)}
    for s in spans:
        top = f.sy(len(lanes) - index[s.lane]) + 3
        x, w = f.sx(s.start), max(f.sx(s.start + s.duration) - f.sx(s.start), 0.5)
        u = f" {unit}" if unit else ""
        tip = f"{s.key} on {s.lane}: {fmt_num(s.duration)}{u} from {fmt_num(s.start)}{u}"
        f.parts.append(f'<rect class="span" x="{x}" y="{top}" width="{w:.2f}" '
                       f'height="{lane_h - 6}" fill="{colors.get(s.key, "#888")}" '
                       f'data-lane="{escape(s.lane)}" data-key="{escape(s.key)}" '
                       f'data-start="{s.start:.6g}" data-duration="{s.duration:.6g}"><title>'
                       f'{escape(tip + (f" ({s.note})" if s.note else ""))}</title></rect>')
    return f.svg("gantt")
