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

from sim.report.svg_base import (  # noqa: F401
    CHAR_W,
    FONT,
    PALETTE,
    Frame,
    Series,
    Span,
    color_map,
    escape,
    finite,
    fmt_num,
    log_ticks,
    nice_ticks,
    padded,
)


def scatter(series: Sequence[Series], *, x_label: str, y_label: str, title: str = "",
            diagonal: bool = False, connect: bool = False, log: bool = False, width: int = 420,
            height: int = 340) -> str:
    """Points per series.  ``diagonal``: both axes share one range (from 0 unless ``log``) and
    the y = x line is drawn (points above it have y > x).  ``connect``: join each series' points
    in x order.  ``log``: log10 axes (points <= 0 are left out)."""
    keep = (lambda v: v > 0) if log else (lambda v: True)
    xs = [x for x in finite(x for s in series for x in s.xs) if keep(x)] or [1.0]
    ys = [y for y in finite(y for s in series for y in s.ys) if keep(y)] or [1.0]
    if log:
        ticks = log_ticks(min(*xs, *ys), max(*xs, *ys)) if diagonal else []
        x_ticks = ticks or log_ticks(min(xs), max(xs))
        y_ticks = ticks or log_ticks(min(ys), max(ys))
    elif diagonal:
        ticks = nice_ticks(*padded(min(0.0, *xs, *ys), max(*xs, *ys)))
        x_ticks = y_ticks = ticks
    else:
        x_ticks = nice_ticks(*padded(min(xs), max(xs)))
        y_ticks = nice_ticks(*padded(min(ys), max(ys)))
    colors = color_map([s.name for s in series])
    f = Frame(width, height, x_ticks, y_ticks, title=title, legend=colors, log=log)
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
    xs = finite(x for s in series for x in s.xs) or [0.0]
    base = [0.0] * max((len(s.xs) for s in series), default=0)
    tops: list[list[float]] = []
    for s in series:
        top = [b + y for b, y in zip(base, s.ys)] if stacked else [float(y) for y in s.ys]
        tops.append(top)
        if stacked:
            base = top
    ys = finite(y for t in tops for y in t) or [0.0]
    colors = color_map([s.name for s in series])
    f = Frame(width, height, nice_ticks(min(xs), max(xs)), nice_ticks(min(0.0, *ys), max(ys)),
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


def _path(f: Frame, xs: list[float], ys: list[float], step: bool, reverse: bool = False) -> str:
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
    vals = finite(v for _, vs in series for v in vs) or [0.0]
    if clip:
        vals = [min(max(v, clip[0]), clip[1]) for v in vals]
    y_ticks = nice_ticks(*padded(min(0.0, *vals), max(0.0, *vals), 0.1))
    colors = color_map([name for name, _ in series])
    f = Frame(width, height, None, y_ticks, title=title, legend=colors)
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
    vals = finite(v for _, vs in series for v in vs) or [0.0]
    lo, hi = min(vals), max(vals)
    if hi == lo:
        lo, hi = lo - (abs(lo) * 0.05 or 0.5), hi + (abs(hi) * 0.05 or 0.5)
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    counts = []
    for _, vs in series:
        c = [0] * bins
        for v in finite(vs):
            c[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
        counts.append(c)
    colors = color_map([name for name, _ in series])
    f = Frame(width, height, nice_ticks(lo, hi),
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
    legend_h = 16 * len(Frame.legend_rows(used, width - left - 16))
    height = int(12 + (18 if title else 0) + legend_h + 6 + lane_h * len(lanes) + 44)
    f = Frame(width, height, nice_ticks(0.0, end or 1.0), [0.0, float(len(lanes))],
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
