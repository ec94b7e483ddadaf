"""The HTML report of a sweep folder (``infer-os report DIR`` when ``DIR/sweep.json`` exists): the
Pareto fronts (throughput vs KV memory vs estimated quality; TTFT vs decode tok/s) drawn with
Plotly (``sim.report.plot``) and the best point per objective, one section per cost model (their
figures do not mix)."""

from __future__ import annotations

from pathlib import Path

from sim.errors import UserError
from sim.report import plot, style
from sim.report.fmt import bytes_unit, format_value, time_unit
from sim.report.html import escape, note, page, table
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
SHOWN = (  # (column, header); values formatted by ``sim.report.fmt.format_value``
    ("throughput_tok_s", "tok/s"),
    ("speedup_vs_baseline", "speedup"),
    ("decode_tok_s", "decode tok/s"),
    ("ttft_p50_s", "TTFT p50"),
    ("tpot_p50_s", "TPOT p50"),
    ("kv_peak_bytes", "KV peak"),
    ("kv_memory_saved_frac", "KV saved"),
    ("delta_ppl", "est. \u0394PPL"),
    ("quality_pct", "est. quality"),
    ("num_failed", "failed req."),
)
MAX_TABLE_ROWS = 40


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
    return page(f"infer-os sweep {manifest.get('sweep', out_dir.name)}", "", body)


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
    rows = "".join(f'<tr><th class="l">{escape(str(k))}</th><td class="l">{escape(str(v))}</td>'
                   "</tr>" for k, v in facts)
    return f'<div class="tbl"><table>{rows}</table></div>'


def _section(cost_model: str, rows: list[dict], axes: list[str]) -> str:
    if not rows:
        return f"<h2>cost model: {escape(cost_model)}</h2><p>No point ran.</p>"
    front3 = pareto_front(rows, TRADE_OFF)
    kv_factor, kv_unit = bytes_unit(max((r.get("kv_peak_bytes") or 0) for r in rows))
    kv = ("kv_peak_bytes", kv_factor, f"KV peak ({kv_unit})")
    t_factor, t_unit = time_unit(max((r.get("ttft_p50_s") or 0) for r in rows))
    charts = [
        _chart(rows, axes, kv, ("throughput_tok_s", 1.0, "throughput (tok/s)"), "min", "max",
               "Throughput vs KV memory", front3),
        _chart(rows, axes, kv, ("quality_pct", 1.0, "estimated quality (%)"), "min", "max",
               "Estimated quality vs KV memory", front3),
        _chart(rows, axes, ("ttft_p50_s", t_factor, f"TTFT p50 ({t_unit})"),
               ("decode_tok_s", 1.0, "decode tok/s per sequence"), "min", "max",
               "TTFT vs decode speed"),
    ]
    notes = note("In each chart, the Pareto front of the two plotted objectives "
                 "(KV peak memory and TTFT: lower is better; throughput, quality and decode "
                 "speed: higher is better), drawn on top as large diamonds: the points no other "
                 "point matches or beats on both and beats on one. \u201cOn the 3-way front "
                 "only\u201d: not on this chart's front but on the front of throughput, KV memory "
                 "and quality together (a better trade on the third). Dominated points are "
                 "small and grey. The colours mean the same on every chart. Hover a point for "
                 "its parameters; drag to zoom, double-click to reset. Quality is the "
                 "simulator's estimate (sim/quality/model.py), not a measurement.")
    if cost_model == "coefficient":
        notes += note("coefficient = the paper's projection method (baseline rate x stated "
                      "coefficients), not physics.")
    picks = [(title, best(rows, col, sense, "throughput_tok_s")) for title, col, sense in
             OBJECTIVES]
    best_rows = [(t, rows[i]) for t, i in picks if i is not None]
    front_rows = sorted((rows[i] for i in front3), key=lambda r: -r["throughput_tok_s"])
    more = len(front_rows) - MAX_TABLE_ROWS
    return (f"<h2>cost model: {escape(cost_model)} ({len(rows)} points)</h2>"
            f"<div class=\"grid\">{''.join(charts)}</div>{notes}"
            "<h3>Best point per objective</h3>" + _table(best_rows, axes, "objective")
            + f"<h3>The throughput / KV memory / quality front ({len(front_rows)} points)</h3>"
            + _table([("", r) for r in front_rows[:MAX_TABLE_ROWS]], axes, None)
            + (note(f"... and {more} more (results.csv)") if more > 0 else ""))


def _chart(rows: list[dict], axes: list[str], x: tuple[str, float, str],
           y: tuple[str, float, str], x_sense: str, y_sense: str, title: str,
           front3: list[int] | None = None) -> str:
    """Every point, the two plotted objectives' Pareto front on top (and, with ``front3``, the
    rest of the three-way front apart); ``x``/``y``: (column, scale to display units, label)."""
    (x, x_scale, x_label), (y, y_scale, y_label) = x, y
    usable = [i for i, r in enumerate(rows) if r.get(x) is not None and r.get(y) is not None]
    front = set(pareto_front(rows, {x: x_sense, y: y_sense}))
    three_way = set(front3 or ()) - front
    groups = {"dominated": [i for i in usable if i not in front | three_way]}
    if front3 is not None:
        groups["on the 3-way front only"] = [i for i in usable if i in three_way]
    groups["Pareto front"] = sorted((i for i in usable if i in front),
                                    key=lambda i: rows[i][x])  # drawn last: on top
    traces = []
    for name, idx in groups.items():
        trace = plot.points(name, [rows[i][x] * x_scale for i in idx],
                            [rows[i][y] * y_scale for i in idx],
                            [_tip(rows[i], axes) for i in idx], style.PARETO[name],
                            style.PARETO_MARKER[name], gl=len(usable) > plot.GL_THRESHOLD * 4)
        if name == "Pareto front" and len(idx) > 1:  # the front as a line joining its points
            trace.update(mode="lines+markers", line={"color": style.PARETO[name], "width": 1,
                                                     "shape": "hv"})
        traces.append(trace)
    fig = plot.scatter_fig(traces, title=title, x_title=x_label, y_title=y_label, height=400)
    return plot.chart(fig)


def _tip(row: dict, axes: list[str]) -> str:
    values = "<br>".join(f"{a} = {format_value(a, row.get(a))}" for a in axes)
    metrics = "<br>".join(f"{h}: {format_value(c, row.get(c))}" for c, h in SHOWN[:7])
    return f"<b>{escape(str(row['point_id']))}</b><br>{values}<br>{metrics}"


def _table(items: list[tuple[str, dict]], axes: list[str], first: str | None) -> str:
    head = ([first] if first else []) + axes + [h for _, h in SHOWN]
    rows = [([title] if first else []) + [format_value(a, row.get(a)) for a in axes]
            + [format_value(c, row.get(c), unit=False) for c, _ in SHOWN]
            for title, row in items]
    return table(head, rows, text_columns=len(head) - len(SHOWN))


def _failures(rows: list[dict], axes: list[str]) -> str:
    head = [*axes, "cost model", "error"]
    cells = [[*(format_value(a, r.get(a)) for a in axes), r["cost_model"], r["error"]]
             for r in rows[:MAX_TABLE_ROWS]]
    return (f"<h2>Failed points ({len(rows)})</h2>"
            + note("Each raised an exception; the sweep went on without them.")
            + table(head, cells, text_columns=len(head)))
