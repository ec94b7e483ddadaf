"""Schedule replay: the measured run's schedule held fixed, its step times predicted.

The free-running prediction lets the simulated engine take its own path: its own admissions,
batches and draft lengths, decided from predicted times.  Here the path is the measured one:
the steps the measured run took (``sim.run.shadow``: same order, same batches, same draft
lengths, same admissions), each lasting what the cost model predicts for it.  Requests arrive as
the workload says: at their times (open arrivals), or when a user's previous request ends
(closed loop, in the measured order of completions).  A step starts when the one before it ended
and, for a prefill, once its requests have arrived; the measured run's steps ran one after
another on one device, and so do these (a run that placed steps on several devices is replayed
the same way, which overstates its time: ``replay`` says so).

The error of this replay against the measurement is the cost model's error on the measured
schedule; the free-running error minus it is what the schedule's divergence (policy decisions
on predicted times, queueing) contributes.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from sim.engine.state import COMPLETED, RunState
from sim.run.metrics import run_metrics
from sim.run.validate import relative_error

TIMING = ("throughput_tok_s", "makespan_s", "ttft_s.p50", "ttft_s.p90", "tpot_s.p50",
          "tpot_s.p90", "e2e_s.p50", "e2e_s.p90")


def replay(measured, rows: list[dict]) -> tuple[dict, RunState]:
    """(the replay's metrics, its run state) from a measured run kept with ``shadow`` and the
    predicted seconds of each of its steps (``rows`` from ``sim.run.shadow.predict``)."""
    req, st = measured.requests, measured.state
    steps = measured.shadow_steps
    n = len(req)
    last_step = {}
    for i, (plan, _m, _e) in enumerate(steps):
        for rid in plan.request_ids:
            last_step[int(rid)] = i
    out = RunState(n, False)
    closed = req.concurrency is not None
    if closed:
        out.arrival_s[:min(req.concurrency, n)] = 0.0
        next_user = min(req.concurrency, n)
    else:
        out.arrival_s[:] = req.arrival_s
    t = 0.0
    for i, ((plan, _m, _e), row) in enumerate(zip(steps, rows)):
        ids = [int(r) for r in plan.request_ids]
        start = t
        if plan.phase == "prefill":
            start = max(start, float(np.nanmax(out.arrival_s[ids])))
            for rid in ids:
                if np.isnan(out.admitted_s[rid]):
                    out.admitted_s[rid] = start
        end = start + float(row["predicted_step_s"])
        if plan.phase == "prefill":
            for rid in ids:
                if np.isnan(out.first_token_s[rid]):
                    out.first_token_s[rid] = end
        for rid in ids:
            if last_step.get(rid) == i and st.status[rid] == COMPLETED:
                out.complete(rid, end)
                out.generated[rid] = st.generated[rid]
                if closed and next_user < n:
                    out.arrival_s[next_user] = end + req.think_s
                    next_user += 1
        t = end
    m = measured.metrics["buffers"]
    stats = SimpleNamespace(num_allocs=m["num_allocs"], alloc_bytes=m["alloc_bytes"],
                            num_reuses=m["num_reuses"], copy_bytes=m["copy_bytes"],
                            efficiency_frac=m["efficiency_frac"])
    return run_metrics(out, req.output_tokens, 0, 0, stats), out


def schedule_fixed(measured, rows: list[dict], free_errors: dict) -> dict:
    """``{"relative_error", "schedule_share"}``: the replay's timing errors against the
    measurement and, per metric, the free-running error minus it (what the schedule's
    divergence adds)."""
    from sim.run.metrics import metric_value

    metrics, _ = replay(measured, rows)
    errors = {name: relative_error(metric_value(metrics, name),
                                   metric_value(measured.metrics, name)) for name in TIMING}
    share = {name: None if errors[name] is None or free_errors.get(name) is None
             else float(f"{free_errors[name] - errors[name]:.6g}") for name in TIMING}
    devices = {d for plan, _m, _e in measured.shadow_steps for d in plan.placement.devices}
    return {"relative_error": errors, "schedule_share": share} | (
        {"note": "steps on several devices replayed one after another: times overstated"}
        if len(devices) > 1 else {})
