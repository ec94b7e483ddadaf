"""The ``infer-os report`` page of a ``simulate|measure --out`` folder: the runs' metrics, their
throughput, and per run the device timeline and KV memory over time."""

from __future__ import annotations

from pathlib import Path

from sim.report import svg
from sim.report.html import (
    FOLD_NOTE,
    KV_NOTE,
    TIMELINE_NOTE,
    figure,
    fold,
    kv_chart,
    note,
    page,
    run_files,
    table,
    timeline_chart,
    trace_spans,
)
from sim.run.units import format_bytes, format_number, format_seconds


def results_page(out_dir: Path, doc: dict) -> str:
    """The whole page for ``out_dir`` holding ``doc`` (its ``results.json``)."""
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
    """One row per run: throughput, speedup, median latencies, KV peak and saving, outcome."""
    rows = []
    for r in runs:
        m = r["metrics"]
        saved = m.get("kv_memory_saved_frac")
        rows.append([r["variant"], r["cost_model"] or "measured",
                     format_number(m["throughput_tok_s"], ".2f"),
                     format_number(m.get("speedup_vs_baseline"), ".2f") + "x",
                     format_seconds(m["ttft_s"]["p50"]), format_seconds(m["tpot_s"]["p50"]),
                     format_seconds(m["e2e_s"]["p50"]), format_bytes(m["kv_peak_bytes"]),
                     "-" if saved is None else f"{saved:.0%}",
                     f"{m['num_completed']}/{m['num_failed']}"])
    return table(["variant", "cost model", "tok/s", "speedup", "TTFT p50", "TPOT p50",
                  "E2E p50", "KV peak", "KV saved", "done/failed"], rows)


def _stem(run: dict) -> str:
    return f"{run['variant']}.{run['cost_model'] or 'measured'}".replace("/", "_")


def _label(run: dict) -> str:
    return f"{run['variant']} ({run['cost_model'] or 'measured'})"
