"""HTML building blocks of the ``infer-os report`` pages: page parts (page, table, note, warning,
figure, fold) and the per-run charts (device timeline, KV memory by precision); the folder's
files are read by ``sim.report.files``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sim.report import svg
from sim.report.files import Damaged, kv_timeline
from sim.run.units import bytes_unit, time_unit

MAX_SPANS = 1500  # Gantt bars per chart; a longer run shows its beginning (and says so)
DEVICE_PRECISIONS = ("fp16", "int8", "int4", "int2")  # device tier; the rest live on the host
CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{padding:.25em .7em;border-bottom:1px solid #e5e5e5;text-align:right}
th:first-child,td:first-child,th.l,td.l{text-align:left}
.note{color:#555;font-size:.9em;max-width:60em}.sub{color:#555;margin-top:0}
.warn{color:#a40;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:1em}figure{margin:.5em 0}svg{max-width:100%;height:auto}
summary{cursor:pointer;font-weight:600;margin:.5em 0}
"""


# -- page parts -------------------------------------------------------------------------------

def page(title: str, subtitle: str, body: list[str]) -> str:
    """The whole self-contained page: title, subtitle and the ``body`` HTML parts in order."""
    e = svg.escape
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{e(title)}</h1><p class=\"sub\">{e(subtitle)}</p>"
            + "\n".join(body) + "</body></html>\n")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A table of text cells (escaped); the first column left-aligned, the rest right."""
    e = svg.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    """A paragraph of explanatory text (escaped)."""
    return f'<p class="note">{svg.escape(text)}</p>'


def warning(text: str) -> str:
    """A paragraph that stands out: something in the folder is wrong or missing (escaped)."""
    return f'<p class="warn">{svg.escape(text)}</p>'


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


def figure(chart: str, caption: str = "") -> str:
    """A chart (an ``<svg>`` string) with an optional caption (escaped)."""
    cap = f"<figcaption class=\"note\">{svg.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{chart}{cap}</figure>"


def fold(summary: str, content: str, is_open: bool) -> str:
    """A section the reader opens and closes (HTML ``details``: no script)."""
    attr = ' open="open"' if is_open else ""
    return f"<details{attr}><summary>{svg.escape(summary)}</summary>{content}</details>"


# -- per-run charts ---------------------------------------------------------------------------

def timeline_chart(spans: list[svg.Span], title: str, x_max_s: float | None = None,
                   colors: dict[str, str] | None = None) -> str:
    """The Gantt chart of one run's trace (its first ``MAX_SPANS`` ops if longer)."""
    shown = sorted(spans, key=lambda s: s.start)[:MAX_SPANS]
    end_s = x_max_s or max((s.start + s.duration for s in spans), default=1.0)
    if len(shown) < len(spans):
        end_s = max(s.start + s.duration for s in shown)
    factor, unit = time_unit(end_s)
    scaled = [svg.Span(s.lane, s.start * factor, s.duration * factor, s.key, s.note)
              for s in shown]
    chart = svg.gantt(scaled, x_label=f"engine clock ({unit})", title=title, colors=colors,
                      x_max=end_s * factor, unit=unit)
    more = (f"Only the first {len(shown)} of {len(spans)} ops are drawn."
            if len(shown) < len(spans) else "")
    return figure(chart, more)


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
        top = max(sum(v) for v in zip(*(by[k] for k in names))) if stacked else \
            max(max(by[k]) for k in names)
        factor, unit = bytes_unit(top)
        series = [svg.Series(k, xs, [v * factor for v in by[k]]) for k in names]
        out.append(figure(svg.lines(series, x_label=f"engine clock ({t_unit})",
                                    y_label=f"{label} ({unit})", stacked=stacked,
                                    title=f"{title}: {label}")))
    return "".join(out)


# -- captions shared by the pages -------------------------------------------------------------

TIMELINE_NOTE = ("Each lane is a device; each bar is one op the engine ran on it (prefill, "
                 "decode, draft, verify, KV moves, buffer allocations), placed on the engine "
                 "clock; hover a bar for its duration and batch size.")
FOLD_NOTE = "  Click a run's name to open or close its chart."
KV_NOTE = ("KV-cache bytes held after every engine step, by precision: device tiers (fp16, "
           "int8, int4, int2) stacked, so the top edge is the device KV in use; offloaded blocks "
           "and FP16 backups of re-quantized blocks live in host memory and are drawn apart.")
