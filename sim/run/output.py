"""What a run leaves behind: the JSON document, the readable table, the per-request CSV, the
Chrome-trace timeline (open in chrome://tracing or https://ui.perfetto.dev) and the KV-by-precision
timeline (``infer-os report DIR`` draws them)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sim.engine.state import COMPLETED, FAILED
from sim.run.metrics import metric_value
from sim.run.runner import RunOutput
from sim.run.units import format_bytes, format_number

STATUS = {COMPLETED: "completed", FAILED: "failed"}


def add_speedups(runs: list[RunOutput]) -> None:
    """Throughput relative to the variant named ``baseline`` (else the first) per cost model."""
    for run in runs:
        same = [r for r in runs if r.cost_model == run.cost_model]
        base = next((r for r in same if r.variant == "baseline"), same[0])
        ref, mine = base.metrics["throughput_tok_s"], run.metrics["throughput_tok_s"]
        run.metrics["speedup_vs_baseline"] = (float(f"{mine / ref:.12g}") if ref and mine
                                              else None)


def document(scenario: str, backend: str, runs: list[RunOutput]) -> dict:
    return {"scenario": scenario, "backend": backend,
            "runs": [{"variant": r.variant, "cost_model": r.cost_model, "metrics": r.metrics}
                     | ({"error": r.error} if r.error else {}) for r in runs]}


def report_failures(runs: list[RunOutput], console: Console) -> int:
    """Exit status 1 naming each run a policy ended early, else 0."""
    for r in runs:
        if r.error:
            model = f", {r.cost_model or 'measured'}"
            console.print(f"infer-os: error: run {r.variant}{model} ended early: {r.error}",
                          markup=False)
    return 1 if any(r.error for r in runs) else 0


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, allow_nan=False)


def _p50_ms(stats: dict) -> str:
    """The median in milliseconds, one decimal, no unit (the column header names it)."""
    p50 = stats["p50"]
    return format_number(None if p50 is None else p50 * 1e3, ".1f")


def print_table(scenario: str, runs: list[RunOutput], console: Console,
                command: str = "simulate") -> None:
    table = Table(title=f"infer-os {command} {scenario}", title_justify="left")
    for col in ("variant", "cost model", "tok/s", "speedup", "decode tok/s/seq", "TTFT p50 ms",
                "TPOT p50 ms", "KV peak", "KV saved", "done/failed"):
        table.add_column(col, justify="left" if col in ("variant", "cost model") else "right")
    for r in runs:
        m = r.metrics
        saved = m["kv_memory_saved_frac"]
        table.add_row(r.variant, r.cost_model or "-", format_number(m["throughput_tok_s"], ".2f"),
                      format_number(m.get("speedup_vs_baseline"), ".2f") + "x",
                      format_number(m["decode_tok_s"], ".2f"), _p50_ms(m["ttft_s"]),
                      _p50_ms(m["tpot_s"]), format_bytes(m["kv_peak_bytes"]),
                      "-" if saved is None else f"{saved:.0%}",
                      f"{m['num_completed']}/{m['num_failed']}")
    console.print(table)
    if any(r.cost_model == "coefficient" for r in runs):
        console.print("coefficient = the paper's projection method (baseline rate x stated "
                      "coefficients), not physics; roofline = FLOPs and bytes on the profile's "
                      "devices and shared bus.")


def write_requests_csv(run: RunOutput, path: Path) -> None:
    s, req = run.state, run.requests
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request_id", "status", "arrival_s", "admitted_s", "first_token_s",
                    "finish_s", "prompt_tokens", "output_tokens", "generated_tokens", "ttft_s",
                    "e2e_s", "reason"])
        for rid in range(len(req)):
            row = [s.arrival_s[rid], s.admitted_s[rid], s.first_token_s[rid], s.finish_s[rid]]
            cells = ["" if np.isnan(x) else f"{x:.9g}" for x in row]
            ttft = s.first_token_s[rid] - s.arrival_s[rid]
            e2e = s.finish_s[rid] - s.arrival_s[rid]
            w.writerow([rid, STATUS.get(int(s.status[rid]), "pending"), *cells,
                        int(req.prompt_tokens[rid]), int(req.output_tokens[rid]),
                        int(s.generated[rid]), "" if np.isnan(ttft) else f"{ttft:.9g}",
                        "" if np.isnan(e2e) or s.status[rid] != COMPLETED else f"{e2e:.9g}",
                        s.fail_reason.get(rid, "")])


def chrome_trace(run: RunOutput) -> dict:
    """One track per device (pid 1) and one per request (pid 2); times in microseconds."""
    s = run.state
    events: list[dict] = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "devices"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "requests"}}]
    tids: dict[str, int] = {}
    for device, op, start, dur, ids in s.trace:
        if device not in tids:
            tids[device] = len(tids)
            events.append({"ph": "M", "pid": 1, "tid": tids[device], "name": "thread_name",
                           "args": {"name": device}})
        events.append({"ph": "X", "pid": 1, "tid": tids[device], "name": op,
                       "ts": round(start * 1e6, 3), "dur": round(dur * 1e6, 3),
                       "args": {"batch": len(ids)}})
    for rid in range(len(run.requests)):
        spans = (("queued", s.arrival_s[rid], s.admitted_s[rid]),
                 ("prefill", s.admitted_s[rid], s.first_token_s[rid]),
                 ("decode", s.first_token_s[rid], s.finish_s[rid]))
        for name, a, b in spans:
            if np.isfinite(a) and np.isfinite(b) and b >= a:
                events.append({"ph": "X", "pid": 2, "tid": rid, "name": name,
                               "ts": round(a * 1e6, 3), "dur": round((b - a) * 1e6, 3)})
        if rid in s.fail_reason:
            events.append({"ph": "i", "pid": 2, "tid": rid, "name": "failed", "s": "t",
                           "ts": round(s.finish_s[rid] * 1e6, 3),
                           "args": {"reason": s.fail_reason[rid]}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_kv_csv(run: RunOutput, path: Path) -> None:
    """KV bytes by precision after every step (recorded with the trace): ``time_s`` on the
    engine clock, then one column per precision ("backup": FP16 host copies of re-quantized
    blocks; "offloaded": host tier)."""
    timeline = run.state.kv_timeline
    names = list(dict.fromkeys(k for _, by in timeline for k in by))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", *names])
        for t, by in timeline:
            w.writerow([f"{t:.9g}", *(int(by.get(k, 0)) for k in names)])


def run_stem(run: RunOutput) -> str:
    """``{variant}.{cost model}`` of a simulated run, ``{variant}.measured`` of a measured one."""
    return f"{run.variant}.{run.cost_model or 'measured'}".replace("/", "_")


def write_run_files(out_dir: Path, runs: list[RunOutput]) -> None:
    """Per run: ``requests.{stem}.csv``, ``trace.{stem}.json`` and ``kv.{stem}.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in runs:
        stem = run_stem(r)
        write_requests_csv(r, out_dir / f"requests.{stem}.csv")
        (out_dir / f"trace.{stem}.json").write_text(json.dumps(chrome_trace(r)))
        write_kv_csv(r, out_dir / f"kv.{stem}.csv")


def write_out(out_dir: Path, doc: dict, runs: list[RunOutput]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(dumps(doc) + "\n")
    write_run_files(out_dir, runs)


def print_validation(doc: dict, console: Console) -> None:
    """Predicted, measured and signed relative error of the main metrics, per variant."""
    table = Table(title=f"infer-os validate {doc['scenario']} --backend {doc['backend']}",
                  title_justify="left")
    for col in ("variant", "metric", "predicted", "measured", "error"):
        table.add_column(col, justify="left" if col in ("variant", "metric") else "right")
    for run in doc["runs"]:
        for name in ("throughput_tok_s", "ttft_s.p50", "tpot_s.p50", "e2e_s.p50",
                     "kv_peak_bytes"):
            p, m = metric_value(run["predicted"], name), metric_value(run["measured"], name)
            err = run["relative_error"].get(name)
            table.add_row(f"{run['variant']} ({run['cost_model']})", name, format_number(p),
                          format_number(m), "-" if err is None else f"{err:+.1%}")
    console.print(table)
    console.print("error = (predicted - measured) / measured; per-request percentiles and both "
                  "runs' engine state are in --json", style="dim")
