"""HTML building blocks of the ``infer-os report`` pages: page parts (page, table, note, warning,
fold) and the per-run charts (device timeline, KV memory by precision), drawn with Plotly
(``sim.report.plot``); the folder's files are read by ``sim.report.files``."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path

from sim.report import plot, style
from sim.report.files import Damaged, Span, kv_timeline
from sim.report.fmt import bytes_unit, format_bytes, format_seconds, scaled, time_unit

DEVICE_PRECISIONS = ("fp16", "int8", "int4", "int2")  # device tier; the rest live on the host
CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1.2em 0 .3em}
.tbl{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0;max-width:100%}
th,td{padding:.25em .45em;border-bottom:1px solid #e5e5e5;text-align:right;
vertical-align:top;overflow-wrap:break-word}
th{font-weight:600;background:#f6f8fa}
th:first-child,td:first-child,th.l,td.l{text-align:left}
td.n{white-space:nowrap;overflow-wrap:normal}
.note{color:#555;font-size:.9em;max-width:62em}.sub{color:#555;margin-top:0}
.warn{color:#a40;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(330px,1fr));gap:0 1em}
figure{margin:.5em 0;min-width:0}div.chart{width:100%;min-height:120px}
summary{cursor:pointer;font-weight:600;margin:.5em 0}
"""


# -- page parts -------------------------------------------------------------------------------

def escape(text: object) -> str:
    """Text safe inside HTML elements (quotes kept as they are: never used in attributes)."""
    return html.escape(str(text), quote=False)


def page(title: str, subtitle: str, body: list[str]) -> str:
    """The whole self-contained page: title, subtitle and the ``body`` HTML parts in order."""
    sub = f'<p class="sub">{escape(subtitle)}</p>' if subtitle else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>"
            f"<title>{escape(title)}</title><style>{CSS}</style>"
            f"<script>{plot.plotly_js()}</script></head><body>"
            f"<h1>{escape(title)}</h1>{sub}"
            + "\n".join(body) + f"<script>{plot.PAGE_SCRIPT}</script></body></html>\n")


def table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A table of text cells (escaped) that fits the page width: the first ``text_columns``
    columns left-aligned text that wraps, the rest right-aligned values kept on one line."""

    def cls(i: int, cell: str = "th") -> str:
        return ' class="l"' if i < text_columns else (' class="n"' if cell == "td" else "")

    head = "".join(f"<th{cls(i)}>{breakable(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i, 'td')}>"
                                    f"{breakable(str(c)) if i < text_columns else escape(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return (f'<div class="tbl"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def breakable(text: str) -> str:
    """``text`` escaped, with line-break opportunities after ``. _ ( , = /`` (identifiers and
    policy labels wrap there in a narrow table column)."""
    return re.sub(r"(?<=\w)([._(,=/])(?=[A-Za-z_])", r"\1<wbr>", escape(text))


def note(text: str) -> str:
    """A paragraph of explanatory text (escaped)."""
    return f'<p class="note">{escape(text)}</p>'


def warning(text: str) -> str:
    """A paragraph that stands out: something in the folder is wrong or missing (escaped)."""
    return f'<p class="warn">{escape(text)}</p>'


def damaged(err: Damaged, notes: list[str]) -> str:
    """A warning saying the file ``err`` names is damaged and not drawn (and in ``notes``, for
    the command line)."""
    notes.append(f"{err.path}: {err.problem}: not drawn")
    return warning(f"{err}: not drawn.")


def missing(path: Path, notes: list[str]) -> str:
    """A warning that a run's file is not in the folder (and in ``notes``)."""
    notes.append(f"{path}: missing: not drawn")
    return warning(f"{path.name} is missing: not drawn.")


def drawn(draw: Callable[[], str], notes: list[str]) -> str:
    """``draw()``, or the ``damaged`` warning in its place when it meets a damaged file."""
    try:
        return draw()
    except Damaged as err:
        return damaged(err, notes)


def fold(summary: str, content: str, is_open: bool) -> str:
    """A section the reader opens and closes (HTML ``details``)."""
    attr = ' open="open"' if is_open else ""
    return f"<details{attr}><summary>{escape(summary)}</summary>{content}</details>"


# -- per-run charts ---------------------------------------------------------------------------

def timeline_chart(spans: list[Span], title: str, x_max_s: float | None = None) -> str:
    """The Gantt chart of one run's trace: every op, zoomable (``x_max_s``: a shared axis end,
    to compare runs)."""
    end_s = x_max_s or max((s.start + s.duration for s in spans), default=1.0)
    factor, unit = time_unit(end_s)
    return plot.chart(plot.timeline_fig(spans, title=title, time_factor=factor,
                                        time_title=f"engine clock ({unit})", x_max=end_s,
                                        unit=unit),
                      f"{len(spans):,} ops; drag to zoom, double-click to see the whole run.")


def kv_chart(path: Path, title: str) -> str:
    """KV bytes by precision over the run: device tiers stacked, host tiers as their own chart
    when the run used them."""
    times, by = kv_timeline(path)
    if not times:
        return note(f"{title}: no KV timeline recorded.")
    t_factor, t_unit = time_unit(max(times))
    xs = [t * t_factor for t in times]
    device = [k for k in by if k in DEVICE_PRECISIONS and any(by[k])]
    host = [k for k in by if k not in DEVICE_PRECISIONS and any(by[k])]
    out = []
    for names, label, stacked in ((device or list(by)[:1], "device KV", True),
                                  (host, "host tier", False)):
        if not names:
            continue
        totals = [sum(v) for v in zip(*(by[k] for k in names))]
        top = max(totals) if stacked else max(max(by[k]) for k in names)
        factor, unit = bytes_unit(top)
        hover = [f"{format_seconds(t)}: " + ", ".join(f"{k} {format_bytes(by[k][i])}"
                                                      for k in names)
                 + (f"; total {format_bytes(totals[i])}" if stacked and len(names) > 1 else "")
                 for i, t in enumerate(times)]
        series = [(k, scaled(by[k], factor)) for k in names]
        colors = {k: style.precision_color(k) for k in names}
        out.append(plot.chart(plot.line_fig(xs, series, colors, title=f"{title}: {label}",
                                            x_title=f"engine clock ({t_unit})",
                                            y_title=f"{label} ({unit})", hover=hover,
                                            stacked=stacked)))
    return "".join(out)


# -- captions shared by the pages -------------------------------------------------------------

TIMELINE_NOTE = ("Each lane is a device; each bar is one op the engine ran on it (prefill, "
                 "decode, draft, verify, KV moves, buffer allocations), placed on the engine "
                 "clock, every op of the run, coloured by kind (the same colours on every chart); "
                 "hover a bar for its duration and batch size, drag to zoom in.")
FOLD_NOTE = "  Click a run's name to open or close its chart."
KV_NOTE = ("KV-cache bytes held after every engine step, by precision: device tiers (fp16, "
           "int8, int4, int2) stacked, so the top edge is the device KV in use; offloaded blocks "
           "and FP16 backups of re-quantized blocks live in host memory and are drawn apart.")
