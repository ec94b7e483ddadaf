"""The building blocks of ``sim.report.svg``'s charts: data types (``Series``, ``Span``), text
escaping, number formatting, nice ticks, colours and the plot frame (axes, ticks, legend) every
chart draws in."""

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


class Frame:
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
        rows = self.legend_rows(legend, width - left - 16)
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
    def legend_rows(legend: dict[str, str], width: float) -> list[list[str]]:
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


def padded(lo: float, hi: float, frac: float = 0.06) -> tuple[float, float]:
    """The range widened by ``frac`` on each side that has data (0 stays 0): no mark sits on
    the frame."""
    pad = (hi - lo) * frac
    return (lo - pad if lo != 0 else lo), (hi + pad if hi != 0 else hi)


def finite(values) -> list[float]:
    """The values that are numbers (not None, NaN or infinite), as floats."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]
