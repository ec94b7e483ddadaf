"""Served traffic, recorded (``infer-os serve --record DIR``) and read back as a measured run, so
that ``infer-os validate --trace DIR`` compares the simulator's prediction of that traffic with
what the server measured (docs/architecture.md#serving).

A recording folder holds:

- ``trace.csv``: one row per completed request, sorted by arrival: ``arrival_s`` (the engine
  clock: seconds since the server started), ``prompt_tokens``, ``output_tokens`` (the tokens it
  generated).  ``workload.arrival: {kind: trace, path: DIR/trace.csv}`` replays it.
- ``requests.csv``: every request that reached the engine, completed or failed, with the engine
  clock's times (``arrival_s``, ``admitted_s``, ``first_token_s``, ``finish_s``), the wall-clock
  latencies the client saw (``wall_ttft_s``, ``wall_e2e_s``), ``max_tokens``, ``status``,
  ``finish_reason`` and the failure ``reason``.
- ``prompts.jsonl`` (with ``--record-text``): ``{"id", "prompt"}`` per request.
- ``serve.json``, written last (the completion marker): the scenario, variant and ``--set``
  values served, the backend and device, the engine's counters over the whole run (steps, device
  busy time, KV peaks, drafts, buffers) and the settings (``max_waiting``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from sim.engine.executor import ExecutorReport
from sim.engine.state import COMPLETED, RunState
from sim.engine.workload import Requests, read_trace
from sim.errors import UserError
from sim.run.metrics import run_metrics

TRACE, REQUESTS, PROMPTS, MARKER = "trace.csv", "requests.csv", "prompts.jsonl", "serve.json"
TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
REQUEST_COLUMNS = ("id", "arrival_s", "admitted_s", "first_token_s", "finish_s",
                   "prompt_tokens", "output_tokens", "max_tokens", "status", "finish_reason",
                   "wall_ttft_s", "wall_e2e_s", "reason")


@dataclass(frozen=True)
class Recording:
    folder: Path
    meta: dict
    requests: Requests  # the trace, as the simulator reads it
    rows: list[dict]  # requests.csv's completed rows, in the trace's order

    @property
    def trace_path(self) -> Path:
        return self.folder / TRACE


def load_recording(folder: Path) -> Recording:
    """A recording folder, checked; ``UserError`` names the file and what is wrong."""
    marker = folder / MARKER
    if not marker.is_file():
        raise UserError(f"not a finished recording of `infer-os serve --record` (no {MARKER}: "
                        "the server is still running, or was killed before it wrote it)",
                        file=str(folder))
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"unreadable ({err})", file=str(marker)) from None
    for key in ("scenario", "variant", "backend", "engine"):
        if not isinstance(meta, dict) or key not in meta:
            raise UserError(f"missing {key!r}", file=str(marker), field=key)
    requests = read_trace(folder / TRACE)
    rows = _completed_rows(folder / REQUESTS)
    if len(rows) != len(requests):
        raise UserError(f"{len(rows)} completed requests, but {len(requests)} rows in {TRACE}",
                        file=str(folder / REQUESTS))
    return Recording(folder, meta, requests, rows)


def _completed_rows(path: Path) -> list[dict]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("status") == "completed"]
    except OSError as err:
        raise UserError(f"cannot read ({err.strerror})", file=str(path)) from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"unreadable ({err})", file=str(path)) from None
    try:
        for r in rows:
            for key in ("arrival_s", "admitted_s", "first_token_s", "finish_s"):
                r[key] = float(r[key])
            r["output_tokens"] = int(r["output_tokens"])
            r["id"] = int(r["id"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"a bad row ({err})", file=str(path)) from None
    rows.sort(key=lambda r: (r["arrival_s"], r["id"]))
    return rows


def measured_run(rec: Recording, variant: str):
    """The recording as a ``RunOutput`` of a measured run: per-request times on the engine
    clock (as ``measure`` reports them), the engine's counters from ``serve.json``."""
    from sim.run.runner import RunOutput

    n = len(rec.rows)
    state = RunState(n, False)
    for i, r in enumerate(rec.rows):
        state.arrival_s[i], state.admitted_s[i] = r["arrival_s"], r["admitted_s"]
        state.first_token_s[i], state.finish_s[i] = r["first_token_s"], r["finish_s"]
        state.generated[i] = r["output_tokens"]
    state.status[:] = COMPLETED
    e = rec.meta["engine"]
    state.num_steps = dict(e.get("num_steps", state.num_steps))
    state.batch_tokens_sum = dict(e.get("batch_tokens_sum", state.batch_tokens_sum))
    state.batch_size_max = int(e.get("batch_size_max", 0))
    state.device_busy_s = dict(e.get("device_busy_s", {}))
    state.kv_peak_bytes = int(e.get("kv_peak_bytes", 0))
    state.kv_fp16_equiv_peak_bytes = int(e.get("kv_fp16_equiv_peak_bytes", 0))
    state.kv_bytes_by_precision_at_peak = dict(e.get("kv_bytes_by_precision_at_peak", {}))
    state.alloc_s = float(e.get("alloc_s", 0.0))
    state.end_s = float(np.nanmax(state.finish_s)) if n else 0.0
    b = e.get("buffers", {})
    stats = SimpleNamespace(num_allocs=b.get("num_allocs", 0), alloc_bytes=b.get("alloc_bytes", 0),
                            num_reuses=b.get("num_reuses", 0), copy_bytes=b.get("copy_bytes", 0),
                            efficiency_frac=b.get("efficiency_frac", 1.0))
    spec = e.get("speculation", {})
    metrics = run_metrics(state, rec.requests.output_tokens, spec.get("num_proposed", 0),
                          spec.get("num_accepted", 0), stats)
    metrics["measured"] = {"device": rec.meta.get("device", "?"), "served": True}
    report = ExecutorReport(rec.meta.get("device", "?"), float(e.get("steps_s", 0.0)),
                            spec.get("draft_accepted", 0), spec.get("draft_rejections", 0),
                            spec.get("draft_empty", 0))
    return RunOutput(variant, None, metrics, state, rec.requests, report=report)
