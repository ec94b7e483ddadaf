"""What a run leaves behind: the JSON document, the readable table, the per-request CSV, the
Chrome-trace timeline (open in chrome://tracing or https://ui.perfetto.dev) and the KV-by-precision
timeline (``infer-os report DIR`` draws them).

A ``--out`` folder is written so that it is never half-written under a final name: every file
goes to a temporary name in the folder and is renamed into place whole, and ``results.json``
(``validation.json``) comes last, so its presence means every file it lists is whole; an
interrupted run writes it for the runs that finished, with ``"incomplete"`` saying how many.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sim.engine.state import COMPLETED, FAILED
from sim.engine.trace_sink import (
    HEAD_EVENTS,
    PartFile,
    TraceSink,
    device_events,
    kv_rows,
    request_events,
    write_atomic,
    write_failed,
)
from sim.errors import UserError
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
    f = PartFile(path, newline="")
    try:
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
        f.commit()
    finally:
        f.discard()


def chrome_trace(run: RunOutput) -> dict:
    """One track per device (pid 1) and one per request (pid 2); times in microseconds."""
    s = run.state
    ops = ((device, op, start, dur, len(ids)) for device, op, start, dur, ids in s.trace)
    events = [*HEAD_EVENTS, *device_events(ops, {}),
              *request_events(s, range(len(run.requests)))]
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_kv_csv(run: RunOutput, path: Path) -> None:
    """KV bytes by precision after every step (recorded with the trace): ``time_s`` on the
    engine clock, then one column per precision ("backup": FP16 host copies of re-quantized
    blocks; "offloaded": host tier)."""
    timeline = run.state.kv_timeline
    names = dict.fromkeys(k for _, by in timeline for k in by)
    f = PartFile(path, newline="")
    try:
        w = csv.writer(f)
        w.writerow(["time_s", *names])
        w.writerows(kv_rows(timeline, names))
        f.commit()
    finally:
        f.discard()


def stem(variant: str, cost_model: str | None) -> str:
    """``{variant}.{cost model}`` of a simulated run, ``{variant}.measured`` of a measured one."""
    return f"{variant}.{cost_model or 'measured'}".replace("/", "_")


def run_stem(run: RunOutput) -> str:
    return stem(run.variant, run.cost_model)


def prepare_out(out_dir: Path, marker: str) -> None:
    """Before anything runs: ``out_dir`` is created if need be and must take files (else a
    ``UserError`` naming ``--out``); a ``marker`` (``results.json``, ``validation.json``) left
    by an earlier run is removed, so the folder reads as complete only once this run is."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".infer-os-probe.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
        (out_dir / marker).unlink(missing_ok=True)
    except OSError as err:
        raise UserError(f"cannot write to {out_dir} ({err.strerror or err})",
                        field="--out") from None


def trace_sink(out_dir: Path | None, variant: str, cost_model: str | None) -> TraceSink | bool:
    """``record_trace`` of a run: its timeline streamed into ``out_dir``, or none without one."""
    return False if out_dir is None else TraceSink(out_dir, stem(variant, cost_model))


def write_run_files(out_dir: Path, runs: list[RunOutput]) -> None:
    """Per run: ``requests.{stem}.csv``, ``trace.{stem}.json`` and ``kv.{stem}.csv`` (the last
    two streamed during the run when it was recorded with a ``TraceSink``)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_failed(out_dir, err) from None
    for r in runs:
        name = run_stem(r)
        write_requests_csv(r, out_dir / f"requests.{name}.csv")
        if r.state.sink is not None:
            r.state.sink.commit(r.state)
            continue
        write_atomic(out_dir / f"trace.{name}.json", json.dumps(chrome_trace(r)))
        write_kv_csv(r, out_dir / f"kv.{name}.csv")


def incomplete(doc: dict, runs_written: int, runs_planned: int) -> dict:
    """``doc`` of an interrupted run: ``"incomplete"`` says how many runs it holds."""
    return doc | {"incomplete": {"runs_written": runs_written, "runs_planned": runs_planned,
                                 "reason": "interrupted"}}


def write_out(out_dir: Path, doc: dict, runs: list[RunOutput],
              marker: str = "results.json") -> None:
    """The runs' files, then ``marker`` holding ``doc`` (last: it says the folder is whole)."""
    write_run_files(out_dir, runs)
    write_atomic(out_dir / marker, dumps(doc) + "\n")


def print_validation(doc: dict, console: Console) -> None:
    """Predicted, measured and signed relative error of the main metrics, per variant."""
    where = f"--trace {doc['trace']}" if doc.get("trace") else \
        f"{doc['scenario']} --backend {doc['backend']}"
    repeats = doc.get("repeats", 1)
    table = Table(title=f"infer-os validate {where}" + (f" --repeats {repeats}" if repeats > 1
                                                        else ""), title_justify="left")
    cols = ["variant", "metric", "predicted", "measured", "error"]
    if repeats > 1:
        cols = [*cols[:3], "measured median", "spread", "error", "verdict"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("variant", "metric") else "right")
    for run in doc["runs"]:
        for name in ("throughput_tok_s", "ttft_s.p50", "tpot_s.p50", "e2e_s.p50",
                     "kv_peak_bytes"):
            p, m = metric_value(run["predicted"], name), metric_value(run["measured"], name)
            err = run["relative_error"].get(name)
            row = [f"{run['variant']} ({run['cost_model']})", name, format_number(p)]
            if repeats > 1:
                rep = run.get("repeats", {})
                med = rep.get("median", {}).get(name)
                lo, hi = rep.get("min", {}).get(name), rep.get("max", {}).get(name)
                spread = f"{lo / med - 1:+.0%} .. {hi / med - 1:+.0%}" if med else "-"
                row += [format_number(med), spread, "-" if err is None else f"{err:+.1%}",
                        rep.get("verdict", {}).get(name, "-")]
            else:
                row += [format_number(m), "-" if err is None else f"{err:+.1%}"]
            table.add_row(*row)
    console.print(table)
    shadows = [(run["variant"], run["shadow"]) for run in doc["runs"] if run.get("shadow")]
    if shadows:
        table = Table(title="shadow: the calibrated model on each measured step (cost model "
                      "error alone)", title_justify="left")
        for col in ("variant", "step kind", "steps", "median error", "p10 .. p90",
                    "median |error|", "noise floor"):
            table.add_column(col, justify="left" if col in ("variant", "step kind") else
                             "right")
        for variant, shadow in shadows:
            for kind, e in shadow.items():
                table.add_row(variant, kind, str(e["steps"]), f"{e['median']:+.1%}",
                              f"{e['p10']:+.0%} .. {e['p90']:+.0%}", f"{e['median_abs']:.1%}",
                              _floor(e))
        console.print(table)
    fixed = [(run["variant"], run) for run in doc["runs"] if run.get("schedule_fixed")]
    if fixed:
        table = Table(title="the error decomposed: cost model (schedule held fixed) and "
                      "schedule divergence (the rest)", title_justify="left")
        for col in ("variant", "metric", "free-running", "schedule fixed", "schedule share"):
            table.add_column(col, justify="left" if col in ("variant", "metric") else "right")
        for variant, run in fixed:
            sf = run["schedule_fixed"]
            for name in ("throughput_tok_s", "ttft_s.p50", "tpot_s.p50", "e2e_s.p50"):
                free = _first_error(run, name)
                table.add_row(variant, name, _pct(free), _pct(sf["relative_error"].get(name)),
                              _pct(sf["schedule_share"].get(name)))
        console.print(table)
    console.print("error = (predicted - measured) / measured; per-request percentiles and both "
                  "runs' engine state are in --json", style="dim")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _first_error(run: dict, name: str) -> float | None:
    """The free-running error against the first measured run (the one replayed)."""
    from sim.run.validate import relative_error

    return relative_error(metric_value(run["predicted"], name),
                          metric_value(run["measured"], name))


def _floor(e: dict) -> str:
    """A shadow kind's noise floor (``sim.run.shadow.noise_floor``): the floor, and the model's
    median |error| on the same steps; "-" without repeats."""
    if "floor" not in e:
        return "-"
    return f"{e['floor']:.1%} (model {e['floor_abs']:.1%} on {e['floor_steps']})"
