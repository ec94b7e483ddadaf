"""The ``infer-os report`` page of a ``validate --out`` folder: predicted against measured, per
metric and per request, with both runs' timelines and KV memory side by side."""

from __future__ import annotations

from pathlib import Path

from sim.report import svg
from sim.report.files import Damaged, incomplete_note, read_csv, run_files, trace_spans
from sim.report.html import (
    KV_NOTE,
    TIMELINE_NOTE,
    damaged,
    drawn,
    figure,
    kv_chart,
    missing,
    note,
    page,
    table,
    timeline_chart,
    warning,
)
from sim.run.metrics import metric_value
from sim.run.units import bytes_unit

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
SCATTER_NOTE = ("One point per variant: measured on x, predicted on y.  On the dashed y = x line "
                "the prediction is exact; above it the simulator over-predicts.")
PER_REQUEST_NOTE = ("Each request is replayed identically in both runs (same prompt and output "
                    "lengths); its error is (predicted - measured) / measured of its own TTFT or "
                    "end-to-end time, over the requests completed in both runs.")


def validation_page(out_dir: Path, doc: dict, notes: list[str] | None = None) -> str:
    """The whole page for ``out_dir`` holding ``doc`` (its ``validation.json``, checked by
    ``sim.report.files.read_document``); what is damaged or missing is said on the page and
    appended to ``notes``."""
    notes = [] if notes is None else notes
    runs = doc["runs"]
    backend = doc.get("backend", "?")
    body = []
    if (incomplete := incomplete_note(doc)) is not None:
        notes.append(f"{out_dir}: {incomplete}")
        body.append(warning(f"This folder was {incomplete}."))
    body += ["<h2>Predicted against measured</h2>", note(SIGN_NOTE), error_table(runs),
             "<h3>Per metric</h3>", note(SCATTER_NOTE),
             '<div class="grid">' + "".join(metric_scatter(runs, m) for m in SHOWN) + "</div>",
             "<h3>Signed relative error</h3>", error_bars(runs),
             "<h2>Per-request errors</h2>", note(PER_REQUEST_NOTE),
             percentile_table(runs)]
    body += [f"<h3>{svg.escape(r['variant'])}</h3>"
             + drawn(lambda r=r: per_request(out_dir, r), notes) for r in runs]
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


def _is_wide(values: list[float]) -> bool:
    """Positive values spanning more than 30x: drawn on log axes."""
    pos = [v for v in values if v > 0]
    return bool(pos) and max(pos) > 30 * min(pos)


def error_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        for metric in SHOWN:
            name, title = metric[:2]
            factor, unit = _unit(runs, metric)
            p, m = metric_value(r["predicted"], name), metric_value(r["measured"], name)
            err = r["relative_error"].get(name)
            rows.append([r["variant"], title, _scaled(p, factor, unit), _scaled(m, factor, unit),
                         "-" if err is None else f"{err:+.1%}"])
    return table(["variant", "metric", "predicted", "measured", "error"], rows)


def _scaled(x: float | None, factor: float, unit: str) -> str:
    return "-" if x is None else f"{x * factor:.4g} {unit}"


def metric_scatter(runs: list[dict], metric: tuple[str, str, str, float]) -> str:
    name, title = metric[:2]
    factor, unit = _unit(runs, metric)
    series = []
    for r in runs:
        p, m = metric_value(r["predicted"], name), metric_value(r["measured"], name)
        if p is not None and m is not None:
            err = r["relative_error"].get(name)
            tip = (f"{r['variant']}: predicted {p * factor:.4g} {unit}, measured "
                   f"{m * factor:.4g} {unit}" + ("" if err is None else f", error {err:+.1%}"))
            series.append(svg.Series(r["variant"], [m * factor], [p * factor], [tip]))
    log = _is_wide([v for s in series for v in (*s.xs, *s.ys)])
    return figure(svg.scatter(series, x_label=f"measured ({unit})",
                              y_label=f"predicted ({unit})", diagonal=True, log=log,
                              title=title + (" (log axes)" if log else ""),
                              width=310, height=300))


def error_bars(runs: list[dict]) -> str:
    """The figure: a bar per variant and metric (cut beyond ``CLIP_PCT``, said in the caption)."""
    series = []
    for r in runs:
        errs = [r["relative_error"].get(name) for name, *_ in SHOWN]
        series.append((r["variant"], [None if e is None else e * 100 for e in errs]))
    is_cut = any(abs(v) > CLIP_PCT for _, vs in series for v in vs if v is not None)
    chart = svg.bars([title for _, title, *_ in SHOWN], series, y_label="signed error (%)",
                     value_fmt="{:+.1f}%", clip=(-100.0, CLIP_PCT) if is_cut else None,
                     title="Signed relative error by metric and variant")
    return figure(chart, SIGN_NOTE + (f"  The axis stops at +{CLIP_PCT:.0f}%: a bar "
                                      "beyond is cut (a white break) and keeps its value "
                                      "written." if is_cut else ""))


def percentile_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        for name, stats in r.get("per_request", {}).items():
            rows.append([r["variant"], name.removesuffix("_s").upper()]
                        + [("-" if stats.get(k) is None else f"{stats[k]:+.1%}")
                           for k in ("mean", "p50", "p90", "p99")]
                        + ["-" if stats.get("max_abs") is None
                           else f"{stats['max_abs']:.1%}"])
    return table(["variant", "time", "mean", "p50", "p90", "p99", "max |error|"], rows)


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


def per_request(out_dir: Path, run: dict) -> str:
    """A histogram of the per-request signed errors and a scatter of their E2E times."""
    pairs = paired_requests(out_dir, run)
    if pairs is None:
        return note("No per-request CSVs in this folder (older `validate --out`): "
                           "only the percentiles above.")
    errors: dict[str, list[float]] = {"TTFT": [], "E2E": []}
    xs, ys, tips = [], [], []  # measured and predicted E2E (ms) per request
    for rid, p, m in pairs:
        for label, col in (("TTFT", "ttft_s"), ("E2E", "e2e_s")):
            if p[col] and m[col] and float(m[col]) > 0:
                errors[label].append((float(p[col]) - float(m[col])) / float(m[col]) * 100)
        if p["e2e_s"] and m["e2e_s"]:
            xs.append(float(m["e2e_s"]) * 1e3)
            ys.append(float(p["e2e_s"]) * 1e3)
            tips.append(f"request {rid}: predicted {ys[-1]:.4g} ms, measured {xs[-1]:.4g} ms")
    points = svg.Series("requests", xs, ys, tips)
    hist = svg.histogram(list(errors.items()), x_label="(predicted - measured) / measured (%)",
                         title=f"{run['variant']}: per-request error, {len(pairs)} requests",
                         bins=min(20, max(5, len(pairs))), width=560)
    log = _is_wide(xs + ys)
    title = f"{run['variant']}: per-request E2E" + (" (log axes)" if log else "")
    scatter = svg.scatter([points], x_label="measured E2E (ms)", y_label="predicted E2E (ms)",
                          title=title, diagonal=True, log=log, width=360)
    return '<div class="grid">' + figure(hist) + figure(scatter) + "</div>"


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
    colors = svg.color_map(sorted({s.key for ss in spans.values() for s in ss}))
    return "".join(timeline_chart(spans[p], f"{run['variant']} {side}", end_s, colors)
                   if p in spans else damaged(broken[p], notes)
                   for p, side in present)
