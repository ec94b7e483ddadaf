"""The ``infer-os report`` page of a ``validate --out`` folder: predicted against measured, per
metric, per request and (``steps.{variant}.csv``) per step, with both runs' timelines and KV
memory side by side."""

from __future__ import annotations

from pathlib import Path

from sim.report import plot, style
from sim.report.files import Damaged, incomplete_note, read_csv, run_files, trace_spans
from sim.report.fmt import bytes_unit, format_pct, format_seconds, format_value
from sim.report.html import (
    KV_NOTE,
    TIMELINE_NOTE,
    damaged,
    drawn,
    escape,
    kv_chart,
    missing,
    note,
    page,
    table,
    timeline_chart,
    warning,
)
from sim.report.steps import STEPS_NOTE, shadow_table, steps_charts
from sim.run.metrics import metric_value

# (dotted metric, title, unit, factor from the JSON's unit) for the scatter plots
SHOWN = (("throughput_tok_s", "throughput", "tok/s", 1.0),
         ("ttft_s.p50", "TTFT p50", "ms", 1e3),
         ("tpot_s.p50", "TPOT p50", "ms", 1e3),
         ("e2e_s.p50", "E2E p50", "ms", 1e3),
         ("kv_peak_bytes", "KV peak", "MB", 1e-6))
CLIP_PCT = 200.0  # the error axis stops here
SIGN_NOTE = ("Signed relative error = (predicted - measured) / measured: positive means the "
             "simulator over-predicts (for throughput: predicts faster than measured; for a "
             "latency: predicts slower), negative means it under-predicts.")
SCATTER_NOTE = ("One point per variant (the same colour on every chart): measured on x, "
                "predicted on y.  On the dashed y = x line the prediction is exact; above it the "
                "simulator over-predicts.  Hover a point for its values and error.")
PER_REQUEST_NOTE = ("Each request is replayed identically in both runs (same prompt and output "
                    "lengths); its error is (predicted - measured) / measured of its own TTFT or "
                    "end-to-end time, over the requests completed in both runs.  A box spans the "
                    "middle half of the requests, its line is the median; every request is a "
                    "dot (hover it for its id and times).")


def validation_page(out_dir: Path, doc: dict, notes: list[str] | None = None) -> str:
    """The whole page for ``out_dir`` holding ``doc`` (its ``validation.json``, checked by
    ``sim.report.files.read_document``); what is damaged or missing is said on the page and
    appended to ``notes``."""
    notes = [] if notes is None else notes
    runs = doc["runs"]
    backend = doc.get("backend", "?")
    colors = style.series_colors(r["variant"] for r in runs)
    body = []
    if (incomplete := incomplete_note(doc)) is not None:
        notes.append(f"{out_dir}: {incomplete}")
        body.append(warning(f"This folder was {incomplete}."))
    body += ["<h2>Predicted against measured</h2>", note(SIGN_NOTE), error_table(runs),
             "<h3>Per metric</h3>", note(SCATTER_NOTE),
             '<div class="grid">' + "".join(metric_scatter(runs, m, colors) for m in SHOWN)
             + "</div>",
             "<h3>Signed relative error</h3>", error_bars(runs, colors),
             "<h2>Per-request errors</h2>", note(PER_REQUEST_NOTE),
             percentile_table(runs), per_request(out_dir, runs, colors, notes)]
    body += ["<h2>Per-step errors</h2>", note(STEPS_NOTE), shadow_table(runs),
             steps_charts(out_dir, runs, colors, notes)]
    body += ["<h2>Device timelines</h2>",
             note(TIMELINE_NOTE + "  Predicted and measured runs of a variant share one time "
                  "axis.")]
    body += [timelines(out_dir, r, notes) for r in runs]
    body += ["<h2>KV memory over time</h2>", note(KV_NOTE)]
    for r in runs:
        for stem, side in _sides(r):
            path = run_files(out_dir, stem)[1]
            body.append(drawn(lambda p=path, r=r, side=side: kv_chart(p, f"{r['variant']} {side}"),
                              notes) if path.exists()
                        else missing(path, notes))
    cost_models = ", ".join(sorted({r["cost_model"] for r in runs}))
    return page(f"infer-os validate: {doc.get('scenario', '?')} on {backend}",
                f"backend {backend}; predictions by the {cost_models} cost model; "
                f"{len(runs)} variant(s); from {out_dir}", body)


def _sides(run: dict) -> list[tuple[str, str]]:
    v = run["variant"].replace("/", "_")
    return [(f"{v}.{run['cost_model']}", f"predicted ({run['cost_model']})"),
            (f"{v}.measured", "measured")]


def _unit(runs: list[dict], metric: tuple[str, str, str, float]) -> tuple[float, str]:
    """The metric's display unit: bytes in kB, MB or GB by the measured size."""
    name, _, unit, factor = metric
    if unit == "MB":  # a tiny model's KV is kilobytes
        return bytes_unit(max(metric_value(r["measured"], name) or 0 for r in runs))
    return factor, unit


def error_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        for name, title, *_ in SHOWN:
            p, m = metric_value(r["predicted"], name), metric_value(r["measured"], name)
            rows.append([r["variant"], title, format_value(name, p), format_value(name, m),
                         format_pct(r["relative_error"].get(name), signed=True)])
    return table(["variant", "metric", "predicted", "measured", "error"], rows, text_columns=2)


def metric_scatter(runs: list[dict], metric: tuple[str, str, str, float],
                   colors: dict[str, str]) -> str:
    name, title = metric[:2]
    factor, unit = _unit(runs, metric)
    traces = []
    for r in runs:
        p, m = metric_value(r["predicted"], name), metric_value(r["measured"], name)
        if p is not None and m is not None:
            err = r["relative_error"].get(name)
            tip = (f"{r['variant']}, {title}: predicted {format_value(name, p)}, measured "
                   f"{format_value(name, m)}" + ("" if err is None
                                                 else f", error {format_pct(err, True)}"))
            traces.append(plot.points(r["variant"], [m * factor], [p * factor], [tip],
                                      colors[r["variant"]], {"size": 10}))
    fig = plot.scatter_fig(traces, title=title, x_title=f"measured ({unit})",
                           y_title=f"predicted ({unit})", diagonal=True, height=330)
    fig["layout"]["showlegend"] = False  # the table and the bars below name the variants
    fig["layout"]["margin"]["t"] = 36
    return plot.chart(fig)


def error_bars(runs: list[dict], colors: dict[str, str]) -> str:
    """A bar per variant and metric (the axis stops at ``CLIP_PCT``: said in the caption)."""
    series = []
    titles = [title for _, title, *_ in SHOWN]
    for r in runs:
        errs = [r["relative_error"].get(name) for name, *_ in SHOWN]
        values = [None if e is None else e * 100 for e in errs]
        hover = [f"{r['variant']}, {t}: {format_pct(e, True)}" for t, e in zip(titles, errs)]
        series.append((r["variant"], values, hover))
    is_cut = any(abs(v) > CLIP_PCT for _, vs, _ in series for v in vs if v is not None)
    fig = plot.bar_fig(titles, series, colors, title="Signed relative error by metric and variant",
                       y_title="signed error (%)", signed=True, clip=CLIP_PCT)
    return plot.chart(fig, SIGN_NOTE + (f"  The axis stops at \u00b1{CLIP_PCT:.0f}%: hover a bar "
                                        "that reaches the edge for its value." if is_cut else ""))


def percentile_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        for name, stats in r.get("per_request", {}).items():
            rows.append([r["variant"], name.removesuffix("_s").upper()]
                        + [format_pct(stats.get(k), signed=True)
                           for k in ("mean", "p50", "p90", "p99")]
                        + [format_pct(stats.get("max_abs"))])
    return table(["variant", "time", "mean", "p50", "p90", "p99", "max |error|"], rows,
                 text_columns=2)


def paired_requests(out_dir: Path, run: dict) -> list[tuple[str, dict, dict]] | None:
    """(request_id, predicted row, measured row) for requests completed in both runs, or None
    when either per-request CSV is missing."""
    (p_stem, _), (m_stem, _) = _sides(run)
    p_path, m_path = run_files(out_dir, p_stem)[2], run_files(out_dir, m_stem)[2]
    if not (p_path.exists() and m_path.exists()):
        return None
    columns, numbers = ("request_id", "status", "ttft_s", "e2e_s"), ("ttft_s", "e2e_s")
    measured = {row["request_id"]: row for row in read_csv(m_path, columns, numbers)}
    return [(row["request_id"], row, measured[row["request_id"]])
            for row in read_csv(p_path, columns, numbers) if row["status"] == "completed"
            and measured.get(row["request_id"], {}).get("status") == "completed"]


def per_request(out_dir: Path, runs: list[dict], colors: dict[str, str],
                notes: list[str]) -> str:
    """Box plots of the per-request signed errors (TTFT, E2E) per variant, and predicted against
    measured E2E per request; a damaged CSV is said in place of its variant."""
    boxes, traces, out, absent = [], [], [], []
    for r in runs:
        try:
            pairs = paired_requests(out_dir, r)
        except Damaged as err:
            out.append(damaged(err, notes))
            continue
        if pairs is None:
            absent.append(r["variant"])
            continue
        errors: dict[str, tuple[list[float], list[str]]] = {"TTFT": ([], []), "E2E": ([], [])}
        xs, ys, tips = [], [], []  # measured and predicted E2E (ms) per request
        for rid, p, m in pairs:
            for label, col in (("TTFT", "ttft_s"), ("E2E", "e2e_s")):
                if p[col] and m[col] and float(m[col]) > 0:
                    pv, mv = float(p[col]), float(m[col])
                    errors[label][0].append((pv - mv) / mv * 100)
                    errors[label][1].append(f"{r['variant']}, request {rid}: {label} predicted "
                                            f"{format_seconds(pv)}, measured {format_seconds(mv)}")
            if p["e2e_s"] and m["e2e_s"]:
                xs.append(float(m["e2e_s"]) * 1e3)
                ys.append(float(p["e2e_s"]) * 1e3)
                tips.append(f"{r['variant']}, request {rid}: E2E predicted "
                            f"{format_seconds(ys[-1] / 1e3)}, measured "
                            f"{format_seconds(xs[-1] / 1e3)}")
        for label, (values, hover) in errors.items():
            boxes.append((label, f"{r['variant']} ({len(pairs)})", values, hover))
        traces.append(plot.points(r["variant"], xs, ys, tips, colors[r["variant"]],
                                  {"size": 7, "opacity": 0.8}))
    if absent:
        out.append(note(f"No per-request CSVs in this folder for {', '.join(absent)} (older "
                        "`validate --out`): only the percentiles above."))
    if not traces:
        return "".join(out)
    box = plot.box_fig(boxes, style.TIMES, title="Per-request signed error by variant "
                       "(requests in brackets)", y_title="(predicted - measured) / measured (%)")
    scatter = plot.scatter_fig(traces, title="Per-request E2E", x_title="measured E2E (ms)",
                               y_title="predicted E2E (ms)", diagonal=True)
    return "".join(out) + plot.chart(box) + plot.chart(scatter)


def timelines(out_dir: Path, run: dict, notes: list[str]) -> str:
    """Both sides' device timelines on one time axis; a damaged trace is said in its place."""
    paths = [(run_files(out_dir, stem)[0], side) for stem, side in _sides(run)]
    present = [(p, side) for p, side in paths if p.exists()]
    if not present:
        return note(f"{run['variant']}: no traces in this folder.")
    spans, broken = {}, {}
    for p, _ in present:
        try:
            spans[p] = trace_spans(p)
        except Damaged as err:
            broken[p] = err
    end_s = max((s.start + s.duration for ss in spans.values() for s in ss), default=1.0)
    return f"<h3>{escape(run['variant'])}</h3>" + "".join(
        timeline_chart(spans[p], f"{run['variant']} {side}", end_s)
        if p in spans else damaged(broken[p], notes) for p, side in present)
