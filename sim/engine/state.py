"""What a run records: per-request times and outcomes, per-step engine state, device busy time,
KV memory peaks and (optionally) the timeline for a Chrome trace: held in memory
(``record_trace=True``) or streamed to disk as it happens (a ``TraceSink``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim.engine.executor import StepPlan, StepResult
from sim.engine.kv_store import PagedKVStore
from sim.engine.trace_sink import TraceSink

PENDING, COMPLETED, FAILED = 0, 1, 2


class RunState:
    def __init__(self, num_requests: int, record_trace: bool | TraceSink):
        n = num_requests
        self.arrival_s = np.full(n, np.nan)
        self.admitted_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.generated = np.zeros(n, dtype=np.int64)
        self.status = np.zeros(n, dtype=np.int8)
        self.fail_reason: dict[int, str] = {}
        self.device_busy_s: dict[str, float] = {}
        self.num_steps = {"prefill": 0, "decode": 0}
        self.batch_tokens_sum = {"prefill": 0, "decode": 0}
        self.batch_size_max = 0
        self.alloc_s = 0.0  # time spent allocating (and copying into) buffers
        self.spec_proposed = 0
        self.spec_accepted = 0
        self.kv_peak_bytes = 0
        self.kv_fp16_equiv_peak_bytes = 0
        self.kv_bytes_by_precision_at_peak: dict[str, int] = {}
        self.end_s = 0.0
        self.error: Exception | None = None  # what ended the run early (a policy failure)
        self.error_message: str | None = None
        # the timeline: none (False), in ``trace`` and ``kv_timeline`` (True), or on disk (a sink)
        self.sink = record_trace if isinstance(record_trace, TraceSink) else None
        self.record_trace = bool(record_trace)
        self.trace: list[tuple[str, str, float, float, tuple[int, ...]]] = []
        # with the trace: KV bytes by precision after every step, on the engine clock
        self.kv_timeline: list[tuple[float, dict[str, int]]] = []

    def fail(self, rid: int, now: float, reason: str) -> None:
        self.status[rid] = FAILED
        self.finish_s[rid] = now
        self.fail_reason[rid] = reason

    def complete(self, rid: int, now: float) -> None:
        self.status[rid] = COMPLETED
        self.finish_s[rid] = now

    def record_step(self, plan: StepPlan, result: StepResult, now: float) -> None:
        phase = plan.phase
        self.num_steps[phase] += 1
        self.batch_tokens_sum[phase] += len(plan.request_ids)
        self.batch_size_max = max(self.batch_size_max, len(plan.request_ids))
        busy = self.device_busy_s
        for device, seconds in result.device_busy_s.items():
            busy[device] = busy.get(device, 0.0) + seconds
        for _device, op, seconds in result.segments:
            if op == "alloc":
                self.alloc_s += seconds
        if self.sink is not None:
            t, batch = now - result.elapsed_s, len(plan.request_ids)
            for device, op, seconds in result.segments:
                self.sink.device_op(device, op, t, seconds, batch)
                t += seconds
        elif self.record_trace:
            ids = tuple(int(i) for i in plan.request_ids)
            t = now - result.elapsed_s
            for device, op, seconds in result.segments:
                self.trace.append((device, op, t, seconds, ids))
                t += seconds

    def observe_kv(self, store: PagedKVStore, now: float) -> None:
        """What ``store`` holds now, counted as its layout counts it."""
        store.layout.observe(self, now)

    def observe_kv_blocks(self, device_bytes: int, by_precision: Callable[[], dict[str, int]],
                          fp16_equiv: int, now: float) -> None:
        """Whole blocks (``BlockLayout``): ``by_precision`` is called only at a new peak or for
        the timeline, off the hot path of untraced runs."""
        if device_bytes > self.kv_peak_bytes:
            self.kv_peak_bytes = device_bytes
            self.kv_bytes_by_precision_at_peak = by_precision()
        self.kv_fp16_equiv_peak_bytes = max(self.kv_fp16_equiv_peak_bytes, fp16_equiv)
        if self.record_trace:
            self._timeline(now, by_precision())

    def observe_kv_bytes(self, by_precision: dict[str, int], fp16_equiv: int,
                         now: float) -> None:
        """True bytes reported by a real executor (offloaded blocks and FP16 backups are host
        copies, not device KV)."""
        device = sum(v for k, v in by_precision.items()
                     if k not in ("offloaded", "evicted", "backup"))
        if device > self.kv_peak_bytes:
            self.kv_peak_bytes = device
            self.kv_bytes_by_precision_at_peak = dict(by_precision)
        self.kv_fp16_equiv_peak_bytes = max(self.kv_fp16_equiv_peak_bytes, fp16_equiv)
        if self.record_trace:
            self._timeline(now, dict(by_precision))

    def _timeline(self, now: float, by_precision: dict[str, int]) -> None:
        """One point per instant: a second observation at the same time replaces the first."""
        if self.sink is not None:
            self.sink.kv_point(now, by_precision)
        elif self.kv_timeline and self.kv_timeline[-1][0] == now:
            self.kv_timeline[-1] = (now, by_precision)
        else:
            self.kv_timeline.append((now, by_precision))

    def abort(self, now: float, error: Exception, reason: str) -> None:
        """The run ends early (``error``): every request not ended fails with ``reason``."""
        self.error, self.error_message = error, reason
        for rid in np.nonzero(self.status == PENDING)[0].tolist():
            self.fail(rid, now, reason)

    def finish(self, now: float, store: PagedKVStore) -> None:
        self.end_s = now
        for rid in np.nonzero(self.status == PENDING)[0].tolist():
            self.fail(rid, now, "never admitted: the run ended with the request still waiting")
