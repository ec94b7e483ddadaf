"""``infer-os report DIR``: one self-contained HTML page (inline SVG, no JavaScript) from a results
folder written by ``--out``.

Dispatch on what the folder holds: ``sweep.json`` -> ``sim.report.sweep.render`` (sweep reports);
``validation.json`` (``validate --out``) -> predicted against measured (``sim.report.validation``);
``results.json`` (``simulate|measure --out``) -> the runs' metrics.  Both kinds also draw, per run,
the device timeline from ``trace.{stem}.json`` and KV memory by precision from ``kv.{stem}.csv``
(``stem`` = ``{variant}.{cost model}`` or ``{variant}.measured``, see ``sim.run.output``).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from sim.errors import UserError
from sim.report import svg

MAX_SPANS = 1500  # Gantt bars per chart; a longer run shows its beginning (and says so)
MAX_KV_POINTS = 1500  # KV timeline points per chart (the peak of each bucket is kept)
DEVICE_PRECISIONS = ("fp16", "int8", "int4", "int2")  # device tier; the rest live on the host
CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{padding:.25em .7em;border-bottom:1px solid #e5e5e5;text-align:right}
th:first-child,td:first-child,th.l,td.l{text-align:left}
.note{color:#555;font-size:.9em;max-width:60em}.sub{color:#555;margin-top:0}
.grid{display:flex;flex-wrap:wrap;gap:1em}figure{margin:.5em 0}svg{max-width:100%;height:auto}
summary{cursor:pointer;font-weight:600;margin:.5em 0}
"""


# -- entry point ------------------------------------------------------------------------------

def render(out_dir: Path) -> str:
    """The whole HTML page for the results folder ``out_dir``; ``UserError`` if it is not one."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"no such folder: {out_dir}", field="DIR")
    if (out_dir / "sweep.json").exists():
        try:
            from sim.report import sweep as sweep_report
        except ImportError:
            raise UserError(f"{out_dir} is a sweep folder (sweep.json) and sweep reports need "
                            "the module sim.report.sweep, which is not installed here",
                            field="DIR") from None
        return sweep_report.render(out_dir)
    if (out_dir / "validation.json").exists():
        from sim.report.validation import validation_page

        return validation_page(out_dir, read_json(out_dir / "validation.json"))
    if (out_dir / "results.json").exists():
        return results_page(out_dir, read_json(out_dir / "results.json"))
    raise UserError(f"{out_dir} holds no results.json, validation.json or sweep.json: not a "
                    "folder written by `infer-os simulate|measure|validate|sweep --out`",
                    field="DIR")


def write_report(out_dir: Path) -> Path:
    """Render and write ``out_dir/report.html``; returns its path."""
    html = render(Path(out_dir))
    path = Path(out_dir) / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


# -- reading the folder -----------------------------------------------------------------------

def read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read it as JSON ({err})", file=str(path)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        raise UserError("expected an object with a list of runs", file=str(path), field="runs")
    return doc


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def trace_spans(path: Path) -> list[svg.Span]:
    """The device ops of a Chrome trace (pid 1, complete events), times in seconds."""
    events = json.loads(path.read_text())["traceEvents"]
    lanes = {e["tid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("pid") == 1 and e.get("name") == "thread_name"}
    return [svg.Span(lanes.get(e["tid"], str(e["tid"])), e["ts"] / 1e6, e["dur"] / 1e6,
                     e["name"], f"batch {e['args']['batch']}" if "batch" in e.get("args", {})
                     else "")
            for e in events if e.get("ph") == "X" and e.get("pid") == 1]


def kv_timeline(path: Path) -> tuple[list[float], dict[str, list[float]]]:
    """Times (s) and bytes per precision: the rows where the bytes change (a step chart holds
    the value in between) and the last, thinned to ``MAX_KV_POINTS`` rows by keeping the row
    with the most bytes in each bucket (peaks survive)."""
    rows = read_csv(path)
    names = [k for k in (rows[0] if rows else {}) if k != "time_s"]
    rows = [r for i, r in enumerate(rows) if i in (0, len(rows) - 1)
            or any(r[k] != rows[i - 1][k] for k in names)]
    step = max(1, math.ceil(len(rows) / MAX_KV_POINTS))
    kept = [max(rows[i:i + step], key=lambda r: sum(int(r[k]) for k in names))
            for i in range(0, len(rows), step)]
    return ([float(r["time_s"]) for r in kept],
            {k: [float(r[k]) for r in kept] for k in names})


# -- units ------------------------------------------------------------------------------------

def time_unit(max_s: float) -> tuple[float, str]:
    """(factor, unit) to show seconds readably: ms below 2 s."""
    return (1e3, "ms") if max_s < 2 else (1.0, "s")


def bytes_unit(max_bytes: float) -> tuple[float, str]:
    if max_bytes >= 1e9:
        return 1e-9, "GB"
    return (1e-6, "MB") if max_bytes >= 1e6 else (1e-3, "kB")


def fmt_bytes(x: float | None) -> str:
    if x is None:
        return "-"
    factor, unit = bytes_unit(x)
    return f"{x * factor:.3g} {unit}"


def fmt_ms(x: float | None) -> str:
    """Seconds shown in ms below 1 s, else in s."""
    if x is None:
        return "-"
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def fmt(x: float | None, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


# -- page parts -------------------------------------------------------------------------------

def page(title: str, subtitle: str, body: list[str]) -> str:
    e = svg.escape
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{e(title)}</h1><p class=\"sub\">{e(subtitle)}</p>"
            + "\n".join(body) + "</body></html>\n")


def table(header: list[str], rows: list[list[str]]) -> str:
    e = svg.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{svg.escape(text)}</p>'


def figure(chart: str, caption: str = "") -> str:
    cap = f"<figcaption class=\"note\">{svg.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{chart}{cap}</figure>"


def fold(summary: str, content: str, is_open: bool) -> str:
    """A section the reader opens and closes (HTML ``details``: no script)."""
    attr = ' open="open"' if is_open else ""
    return f"<details{attr}><summary>{svg.escape(summary)}</summary>{content}</details>"


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


def run_files(out_dir: Path, stem: str) -> tuple[Path, Path, Path]:
    return (out_dir / f"trace.{stem}.json", out_dir / f"kv.{stem}.csv",
            out_dir / f"requests.{stem}.csv")


TIMELINE_NOTE = ("Each lane is a device; each bar is one op the engine ran on it (prefill, "
                 "decode, draft, verify, KV moves, buffer allocations), placed on the engine "
                 "clock; hover a bar for its duration and batch size.")
FOLD_NOTE = "  Click a run's name to open or close its chart."
KV_NOTE = ("KV-cache bytes held after every engine step, by precision: device tiers (fp16, "
           "int8, int4, int2) stacked, so the top edge is the device KV in use; offloaded blocks "
           "and FP16 backups of re-quantized blocks live in host memory and are drawn apart.")


# -- simulate / measure -----------------------------------------------------------------------

def results_page(out_dir: Path, doc: dict) -> str:
    backend = doc.get("backend", "sim")
    command = "simulate" if backend == "sim" else f"measure --backend {backend}"
    runs = doc["runs"]
    body = ["<h2>Runs</h2>", metrics_table(runs),
            note("Throughput counts output tokens of completed requests over the makespan; "
                 "TTFT = time to first token, TPOT = time per output token after the first, "
                 "E2E = arrival to last token; KV saved = 1 - KV peak / the same tokens at FP16.")]
    series: dict[str, list[float | None]] = {}
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    for r in runs:
        name = r["cost_model"] or "measured"
        series.setdefault(name, [None] * len(variants))[variants.index(r["variant"])] = \
            r["metrics"]["throughput_tok_s"]
    body.append(figure(svg.bars(variants, list(series.items()), y_label="throughput (tok/s)",
                                title="Throughput by variant"), "Higher is better."))
    spans = {_stem(r): trace_spans(path) for r in runs
             if (path := run_files(out_dir, _stem(r))[0]).exists()}
    colors = svg.color_map(sorted({s.key for ss in spans.values() for s in ss}))
    body += ["<h2>Device timelines</h2>", note(TIMELINE_NOTE + FOLD_NOTE)]
    for i, r in enumerate(runs):
        chart = (timeline_chart(spans[_stem(r)], _label(r), colors=colors)
                 if _stem(r) in spans else note(f"trace.{_stem(r)}.json is missing."))
        body.append(fold(_label(r), chart, i < 2))
    body += ["<h2>KV memory over time</h2>", note(KV_NOTE + FOLD_NOTE)]
    for i, r in enumerate(runs):
        path = run_files(out_dir, _stem(r))[1]
        chart = kv_chart(path, _label(r)) if path.exists() else note(f"{path.name} is missing.")
        body.append(fold(_label(r), chart, i < 2))
    return page(f"infer-os {command}: {doc.get('scenario', '?')}",
                f"backend {backend}; {len(runs)} run(s); from {out_dir}", body)


def metrics_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        m = r["metrics"]
        saved = m.get("kv_memory_saved_frac")
        rows.append([r["variant"], r["cost_model"] or "measured", fmt(m["throughput_tok_s"], ".2f"),
                     fmt(m.get("speedup_vs_baseline"), ".2f") + "x", fmt_ms(m["ttft_s"]["p50"]),
                     fmt_ms(m["tpot_s"]["p50"]), fmt_ms(m["e2e_s"]["p50"]),
                     fmt_bytes(m["kv_peak_bytes"]), "-" if saved is None else f"{saved:.0%}",
                     f"{m['num_completed']}/{m['num_failed']}"])
    return table(["variant", "cost model", "tok/s", "speedup", "TTFT p50", "TPOT p50",
                  "E2E p50", "KV peak", "KV saved", "done/failed"], rows)


def _stem(run: dict) -> str:
    return f"{run['variant']}.{run['cost_model'] or 'measured'}".replace("/", "_")


def _label(run: dict) -> str:
    return f"{run['variant']} ({run['cost_model'] or 'measured'})"


