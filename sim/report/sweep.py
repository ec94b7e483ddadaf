"""The HTML report of a sweep folder (``infer-os report DIR`` when ``DIR/sweep.json`` exists): the
Pareto fronts (throughput vs KV memory vs estimated quality; TTFT vs decode tok/s) as inline SVG
and the best point per objective, one section per cost model (their figures do not mix)."""

from __future__ import annotations

from pathlib import Path

from sim.errors import UserError
from sim.report import svg
from sim.report.html import figure, note
from sim.sweep.pareto import best, pareto_front
from sim.sweep.results import MANIFEST_FILE, read_manifest, read_table

# the three-way trade-off of KV tiering
TRADE_OFF = {"throughput_tok_s": "max", "kv_peak_bytes": "min", "quality_pct": "max"}
OBJECTIVES = (  # (title, column, sense)
    ("highest throughput", "throughput_tok_s", "max"),
    ("highest speedup vs baseline", "speedup_vs_baseline", "max"),
    ("least KV memory (peak)", "kv_peak_bytes", "min"),
    ("most KV memory saved", "kv_memory_saved_frac", "max"),
    ("best estimated quality", "quality_pct", "max"),
    ("lowest TTFT p50", "ttft_p50_s", "min"),
    ("fastest decode", "decode_tok_s", "max"),
)
SHOWN = (  # (column, header, scale, format)
    ("throughput_tok_s", "tok/s", 1.0, ".2f"),
    ("speedup_vs_baseline", "speedup", 1.0, ".3f"),
    ("decode_tok_s", "decode tok/s", 1.0, ".2f"),
    ("ttft_p50_s", "TTFT p50 ms", 1e3, ".1f"),
    ("tpot_p50_s", "TPOT p50 ms", 1e3, ".2f"),
    ("kv_peak_bytes", "KV peak MB", 1e-6, ".1f"),
    ("kv_memory_saved_frac", "KV saved %", 100.0, ".1f"),
    ("delta_ppl", "est. ΔPPL", 1.0, ".4f"),
    ("quality_pct", "est. quality %", 1.0, ".2f"),
    ("num_failed", "failed req.", 1.0, "d"),
)
MAX_TABLE_ROWS = 40
CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{padding:.25em .6em;border-bottom:1px solid #e5e5e5;text-align:right}
th.l,td.l{text-align:left}.note{color:#555;font-size:.9em;max-width:62em}
.grid{display:flex;flex-wrap:wrap;gap:1em}svg{max-width:100%;height:auto}
"""


def render(out_dir: Path) -> str:
    """The whole self-contained HTML page for the sweep folder ``out_dir``."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if not manifest:
        raise UserError(f"no {MANIFEST_FILE}: not a sweep folder", file=str(out_dir))
    try:
        table = read_table(out_dir)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the results table ({err})", file=str(out_dir)) from None
    axes = [a for a in manifest.get("axes", []) if a != "cost_model"]
    body = [_header(manifest, table)]
    for cm in dict.fromkeys(r["cost_model"] for r in table):
        ok = [r for r in table if r["cost_model"] == cm and r["status"] == "ok"]
        body.append(_section(cm, ok, axes))
    failed = [r for r in table if r["status"] != "ok"]
    if failed:
        body.append(_failures(failed, axes))
    title = f"infer-os sweep {manifest.get('sweep', out_dir.name)}"
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{svg.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{svg.escape(title)}</h1>" + "".join(body) + "</body></html>\n")


def _header(manifest: dict, table: list[dict]) -> str:
    facts = [("description", manifest.get("description", "")),
             ("base scenario", manifest.get("base", "")),
             ("axes", ", ".join(manifest.get("axes", []))),
             ("sampling", manifest.get("sampling", "")),
             ("points", f"{len(table)} of {manifest.get('num_points')} "
                        f"({manifest.get('num_ok')} ok, {manifest.get('num_failed')} failed)"),
             ("state", manifest.get("state", ""))]
    for i, run in enumerate(manifest.get("runs", []), 1):
        facts.append((f"run {i}", f"{run['num_run']} points in {run['wall_s']} s on "
                                   f"{run['executor']} ({run['num_skipped']} already done)"))
    rows = "".join(f'<tr><th class="l">{svg.escape(k)}</th><td class="l">{svg.escape(v)}</td>'
                   "</tr>" for k, v in facts)
    return f"<table>{rows}</table>"


def _section(cost_model: str, rows: list[dict], axes: list[str]) -> str:
    if not rows:
        return f"<h2>cost model: {svg.escape(cost_model)}</h2><p>No point ran.</p>"
    front3 = pareto_front(rows, TRADE_OFF)
    kv = ("kv_peak_bytes", 1e-6, "KV peak (MB)")
    charts = [
        _chart(rows, axes, kv, ("throughput_tok_s", 1.0, "throughput (tok/s)"), "min", "max",
               "Throughput vs KV memory", front3),
        _chart(rows, axes, kv, ("quality_pct", 1.0, "estimated quality (%)"), "min", "max",
               "Estimated quality vs KV memory", front3),
        _chart(rows, axes, ("ttft_p50_s", 1e3, "TTFT p50 (ms)"),
               ("decode_tok_s", 1.0, "decode tok/s per sequence"), "min", "max",
               "TTFT vs decode speed"),
    ]
    notes = note("In each chart, the Pareto front of the two plotted objectives "
                 "(KV peak memory and TTFT: lower is better; throughput, quality and decode "
                 "speed: higher is better): the points no other point matches or beats on both "
                 "and beats on one. \u201cOn the 3-way front only\u201d: not on this chart's "
                 "front but on the front of throughput, KV memory and quality together (a better "
                 "trade on the third). Quality is the simulator's estimate "
                 "(sim/quality/model.py), not a measurement.")
    if cost_model == "coefficient":
        notes += note("coefficient = the paper's projection method (baseline rate x stated "
                      "coefficients), not physics.")
    picks = [(title, best(rows, col, sense, "throughput_tok_s")) for title, col, sense in
             OBJECTIVES]
    best_rows = [(t, rows[i]) for t, i in picks if i is not None]
    front_rows = sorted((rows[i] for i in front3), key=lambda r: -r["throughput_tok_s"])
    more = len(front_rows) - MAX_TABLE_ROWS
    return (f"<h2>cost model: {svg.escape(cost_model)} ({len(rows)} points)</h2>"
            f"<div class=\"grid\">{''.join(charts)}</div>{notes}"
            "<h3>Best point per objective</h3>" + _table(best_rows, axes, "objective")
            + f"<h3>The throughput / KV memory / quality front ({len(front_rows)} points)</h3>"
            + _table([("", r) for r in front_rows[:MAX_TABLE_ROWS]], axes, None)
            + (note(f"... and {more} more (results.csv)") if more > 0 else ""))


def _chart(rows: list[dict], axes: list[str], x: tuple[str, float, str],
           y: tuple[str, float, str], x_sense: str, y_sense: str, title: str,
           front3: list[int] | None = None) -> str:
    """Every point, the two plotted objectives' Pareto front highlighted (and, with ``front3``,
    the rest of the three-way front apart); ``x``/``y``: (column, scale to display units,
    label)."""
    (x, x_scale, x_label), (y, y_scale, y_label) = x, y
    usable = [i for i, r in enumerate(rows) if r.get(x) is not None and r.get(y) is not None]
    front = set(pareto_front(rows, {x: x_sense, y: y_sense}))
    three_way = set(front3 or ()) - front

    def series(name: str, idx: list[int]) -> svg.Series:
        return svg.Series(name, [rows[i][x] * x_scale for i in idx],
                          [rows[i][y] * y_scale for i in idx],
                          [_tip(rows[i], axes) for i in idx])

    groups = [series("Pareto front", [i for i in usable if i in front])]
    if front3 is not None:
        groups.append(series("on the 3-way front only", [i for i in usable if i in three_way]))
    groups.append(series("dominated", [i for i in usable if i not in front | three_way]))
    return figure(svg.scatter(groups, x_label=x_label, y_label=y_label, title=title,
                              width=520, height=380))


def _tip(row: dict, axes: list[str]) -> str:
    values = ", ".join(f"{a}={row.get(a)}" for a in axes)
    metrics = ", ".join(f"{h} {_fmt(row.get(c), s, f)}" for c, h, s, f in SHOWN[:7])
    return f"{values} [{row['point_id']}]: {metrics}"


def _table(items: list[tuple[str, dict]], axes: list[str], first: str | None) -> str:
    head = ([first] if first else []) + axes + [h for _, h, _, _ in SHOWN]
    cells = "".join(('<th class="l">' if i < len(head) - len(SHOWN) else "<th>")
                    + f"{svg.escape(h)}</th>" for i, h in enumerate(head))
    lines = [f"<tr>{cells}</tr>"]
    for title, row in items:
        tds = ([f'<td class="l">{svg.escape(title)}</td>'] if first else [])
        tds += [f'<td class="l">{svg.escape(row.get(a))}</td>' for a in axes]
        tds += [f"<td>{_fmt(row.get(c), s, f)}</td>" for c, _, s, f in SHOWN]
        lines.append("<tr>" + "".join(tds) + "</tr>")
    return "<table>" + "".join(lines) + "</table>"


def _fmt(value, scale: float, fmt: str) -> str:
    if value is None:
        return "-"
    return format(int(value) if fmt == "d" else value * scale, fmt)


def _failures(rows: list[dict], axes: list[str]) -> str:
    head = "".join(f'<th class="l">{svg.escape(h)}</th>' for h in [*axes, "cost model", "error"])
    lines = [f"<tr>{head}</tr>"]
    for r in rows[:MAX_TABLE_ROWS]:
        cells = [*(r.get(a) for a in axes), r["cost_model"], r["error"]]
        lines.append("<tr>" + "".join(f'<td class="l">{svg.escape(c)}</td>' for c in cells)
                     + "</tr>")
    return (f"<h2>Failed points ({len(rows)})</h2>"
            + note("Each raised an exception; the sweep went on without them.")
            + "<table>" + "".join(lines) + "</table>")
