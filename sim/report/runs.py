"""The ``infer-os report`` page of a ``simulate|measure --out`` folder: the runs' metrics, their
throughput, and per run the device timeline and KV memory over time."""

from __future__ import annotations

from pathlib import Path

from sim.report import plot, style
from sim.report.files import Damaged, Span, incomplete_note, run_files, trace_spans
from sim.report.fmt import format_bytes, format_number, format_pct, format_seconds
from sim.report.html import (
    FOLD_NOTE,
    KV_NOTE,
    TIMELINE_NOTE,
    damaged,
    drawn,
    fold,
    kv_chart,
    missing,
    note,
    page,
    table,
    timeline_chart,
    warning,
)


def results_page(out_dir: Path, doc: dict, notes: list[str] | None = None) -> str:
    """The whole page for ``out_dir`` holding ``doc`` (its ``results.json``, checked by
    ``sim.report.files.read_document``); what is damaged or missing is said on the page and
    appended to ``notes``."""
    notes = [] if notes is None else notes
    backend = doc.get("backend", "sim")
    command = "simulate" if backend == "sim" else f"measure --backend {backend}"
    runs = doc["runs"]
    body = []
    if (incomplete := incomplete_note(doc)) is not None:
        notes.append(f"{out_dir}: {incomplete}")
        body.append(warning(f"This folder was {incomplete}."))
    body += ["<h2>Runs</h2>", metrics_table(runs),
             note("Throughput counts output tokens of completed requests over the makespan; "
                  "TTFT = time to first token, TPOT = time per output token after the first, "
                  "E2E = arrival to last token; KV saved = 1 - KV peak / the same tokens at "
                  "FP16.")]
    series: dict[str, list[float | None]] = {}
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    for r in runs:
        name = r.get("cost_model") or "measured"
        series.setdefault(name, [None] * len(variants))[variants.index(r["variant"])] = \
            r["metrics"].get("throughput_tok_s")
    if runs:
        bars = [(name, values, [f"{v}, {name}: {format_number(x, '.4g')} tok/s"
                                for v, x in zip(variants, values)])
                for name, values in series.items()]
        body.append(plot.chart(plot.bar_fig(variants, bars, style.side_colors(series),
                                            title="Throughput by variant",
                                            y_title="throughput (tok/s)"), "Higher is better."))
    spans: dict[str, list[Span] | Damaged] = {}
    for r in runs:
        if (path := run_files(out_dir, _stem(r))[0]).exists():
            try:
                spans[_stem(r)] = trace_spans(path)
            except Damaged as err:
                spans[_stem(r)] = err
    body += ["<h2>Device timelines</h2>", note(TIMELINE_NOTE + FOLD_NOTE)]
    for i, r in enumerate(runs):
        got = spans.get(_stem(r))
        if got is None:
            chart = missing(run_files(out_dir, _stem(r))[0], notes)
        elif isinstance(got, Damaged):
            chart = damaged(got, notes)
        else:
            chart = timeline_chart(got, _label(r))
        body.append(fold(_label(r), chart, i < 2))
    body += ["<h2>KV memory over time</h2>", note(KV_NOTE + FOLD_NOTE)]
    for i, r in enumerate(runs):
        path = run_files(out_dir, _stem(r))[1]
        chart = (drawn(lambda p=path, r=r: kv_chart(p, _label(r)), notes) if path.exists()
                 else missing(path, notes))
        body.append(fold(_label(r), chart, i < 2))
    return page(f"infer-os {command}: {doc.get('scenario', '?')}",
                f"backend {backend}; {len(runs)} run(s); from {out_dir}", body)


def metrics_table(runs: list[dict]) -> str:
    """One row per run: throughput, speedup, median latencies, KV peak and saving, outcome."""
    rows = []
    for r in runs:
        m = r["metrics"]
        saved = m.get("kv_memory_saved_frac")
        rows.append([r["variant"], r.get("cost_model") or "measured",
                     format_number(m["throughput_tok_s"], ".2f"),
                     format_number(m.get("speedup_vs_baseline"), ".2f") + "x",
                     format_seconds(m["ttft_s"]["p50"]), format_seconds(m["tpot_s"]["p50"]),
                     format_seconds(m["e2e_s"]["p50"]), format_bytes(m["kv_peak_bytes"]),
                     format_pct(saved, digits=0),
                     f"{m['num_completed']}/{m['num_failed']}"])
    return table(["variant", "cost model", "tok/s", "speedup", "TTFT p50", "TPOT p50",
                  "E2E p50", "KV peak", "KV saved", "done/failed"], rows, text_columns=2)


def _stem(run: dict) -> str:
    return f"{run['variant']}.{run.get('cost_model') or 'measured'}".replace("/", "_")


def _label(run: dict) -> str:
    return f"{run['variant']} ({run.get('cost_model') or 'measured'})"
