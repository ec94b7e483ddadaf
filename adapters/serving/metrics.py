"""What the server measures: Prometheus metrics (``GET /metrics``) and the dashboard's series
(``GET /api/dashboard``).

Names follow vLLM's (``vllm:time_to_first_token_seconds`` ...) with the prefix ``infer_os:``
where they mean the same thing; the rest are ours (KV bytes by precision, KV saved, buffer
allocations, device busy time).  Latencies are wall-clock seconds as the server saw them: from
the request's arrival at the HTTP handler to its first token leaving the engine (TTFT), between
tokens (inter-token latency: a step's time shared by the tokens it emitted), per output token
after the first (TPOT) and to its end (e2e).  Each server has its own registry.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from policies import Precision

P = "infer_os:"
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                   5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
PRECISIONS = [p.name.lower() for p in Precision if p is not Precision.EVICTED]
SAMPLE_S = 0.5  # the dashboard's series: one point per half second
SERIES_POINTS = 600  # 5 minutes
TIMELINE_S = 10.0  # the device timeline of the last 10 s
LATENCY_WINDOW_S = 30.0  # percentiles over the requests that ended in the last 30 s


class ServeMetrics:
    """The registry and the series; ``step`` and ``request_ended`` are called on the engine
    thread, ``sample`` every ``SAMPLE_S`` and ``dashboard`` on the HTTP side."""

    def __init__(self, session, labels: dict[str, str]):
        self.session, self.labels = session, labels
        self.registry = r = CollectorRegistry()
        names = ["model_name"]
        model = labels["model"]
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Time to first token (s)",
                              names, registry=r, buckets=LATENCY_BUCKETS).labels(model)
        self.itl = Histogram(P + "inter_token_latency_seconds", "Inter-token latency (s)",
                             names, registry=r, buckets=LATENCY_BUCKETS).labels(model)
        self.tpot = Histogram(P + "time_per_output_token_seconds",
                              "Time per output token after the first (s)", names, registry=r,
                              buckets=LATENCY_BUCKETS).labels(model)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "End-to-end request latency (s)",
                             names, registry=r, buckets=LATENCY_BUCKETS).labels(model)
        self.prompt_hist = Histogram(P + "request_prompt_tokens", "Prompt tokens per request",
                                     names, registry=r, buckets=TOKEN_BUCKETS).labels(model)
        self.gen_hist = Histogram(P + "request_generation_tokens",
                                  "Generated tokens per request", names, registry=r,
                                  buckets=TOKEN_BUCKETS).labels(model)
        self.success = Counter(P + "request_success", "Requests completed, by finish reason",
                               names + ["finished_reason"], registry=r)
        self.failure = Counter(P + "request_failure", "Requests failed, by HTTP status",
                               names + ["status"], registry=r)
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens of completed requests",
                                     names, registry=r).labels(model)
        self.gen_tokens = Counter(P + "generation_tokens", "Tokens generated", names,
                                  registry=r).labels(model)
        eng = session.engine
        running = Gauge(P + "num_requests_running", "Requests being prefilled or decoded", names,
                        registry=r).labels(model)
        running.set_function(lambda: len(eng.running) + eng.num_prefilling)
        waiting = Gauge(P + "num_requests_waiting", "Requests waiting for admission", names,
                        registry=r).labels(model)
        waiting.set_function(lambda: len(eng.waiting))
        kv_bytes = Gauge(P + "kv_cache_bytes", "KV-cache bytes by precision (true tensor bytes "
                         "after the last step or request end; offloaded: host copies)",
                         names + ["precision"], registry=r)
        for name in PRECISIONS:
            kv_bytes.labels(model, name).set_function(
                lambda name=name: session.last_kv.get(name, 0))
        Gauge(P + "kv_cache_usage_perc", "Device KV bytes / the KV budget", names,
              registry=r).labels(model).set_function(
            lambda: _device_bytes(session.last_kv) / max(session.store.device_budget_bytes, 1))
        Gauge(P + "kv_cache_saved_frac", "1 - device KV bytes / their FP16 size", names,
              registry=r).labels(model).set_function(
            lambda: 1 - _device_bytes(session.last_kv) / session.last_kv_fp16
            if session.last_kv_fp16 else 0.0)
        self.busy = Counter(P + "device_busy_seconds", "Measured step time, by device",
                            names + ["device"], registry=r)
        self.busy_frac = Gauge(P + "device_busy_frac", f"Busy fraction over the last "
                               f"{SAMPLE_S:g} s, by device", names + ["device"], registry=r)
        self.steps = Counter(P + "engine_steps", "Engine steps, by phase", names + ["phase"],
                             registry=r)
        r.register(_EngineCounters(session, model))
        self._lock = threading.Lock()
        self._recent: deque = deque()  # (end wall, ttft, tpot, e2e) of recent requests
        self._ops: deque = deque()  # (device, op, start, seconds, batch)
        self._series: deque = deque(maxlen=SERIES_POINTS)
        self._busy_total: dict[str, float] = {}
        self._last = (time.monotonic(), 0.0, {}, 0, 0)
        self.totals = {"requests": 0, "completed": 0, "failed": 0, "prompt_tokens": 0,
                       "generation_tokens": 0}

    # -- the engine thread -------------------------------------------------------------------
    def step(self, plan, result, now: float) -> None:
        session, model = self.session, self.labels["model"]
        self.steps.labels(model, plan.phase).inc()
        t = now - result.elapsed_s - session.started
        with self._lock:
            for device, op, seconds in result.segments:
                self._ops.append((device, op, t, seconds, len(plan.request_ids)))
                t += seconds
            while self._ops and self._ops[0][2] < now - session.started - TIMELINE_S:
                self._ops.popleft()
            for device, seconds in result.device_busy_s.items():
                self.busy.labels(model, device).inc(seconds)
                self._busy_total[device] = self._busy_total.get(device, 0.0) + seconds
        for rid in (int(r) for r in plan.request_ids):
            job = session.jobs.get(rid)
            if job is None or job.last_token_at != now:
                continue
            n = len(job.kept) - job.counted
            if n > 0:
                self.gen_tokens.inc(n)
                self.totals["generation_tokens"] += n
                if job.counted:  # not the first token: inter-token latency
                    for _ in range(n):
                        self.itl.observe((now - job.counted_at) / n)
                job.counted, job.counted_at = len(job.kept), now

    def request_ended(self, job, row: dict) -> None:
        model = self.labels["model"]
        self.totals["requests"] += 1
        if not row["completed"]:
            self.totals["failed"] += 1
            return
        self.totals["completed"] += 1
        self.totals["prompt_tokens"] += len(job.prompt_ids)
        self.success.labels(model, job.finish_reason).inc()
        self.prompt_tokens.inc(len(job.prompt_ids))
        self.prompt_hist.observe(len(job.prompt_ids))
        self.gen_hist.observe(len(job.kept))
        ttft = job.first_token_at - job.received if job.first_token_at else None
        tpot = (job.last_token_at - job.first_token_at) / (len(job.kept) - 1) \
            if len(job.kept) > 1 else None
        e2e = job.ended_at - job.received
        if ttft is not None:
            self.ttft.observe(ttft)
        if tpot is not None:
            self.tpot.observe(tpot)
        self.e2e.observe(e2e)
        with self._lock:
            self._recent.append((job.ended_at, ttft, tpot, e2e))

    def failed(self, status: int) -> None:
        """A request refused or failed, with the HTTP status it got (the HTTP side counts
        refusals that never reached the engine; the engine's failures come through here too)."""
        self.failure.labels(self.labels["model"], str(status)).inc()

    # -- sampling and the dashboard (HTTP side) ----------------------------------------------
    def sample(self) -> None:
        """One point of the dashboard's series (every ``SAMPLE_S``)."""
        s, eng, model = self.session, self.session.engine, self.labels["model"]
        now = time.monotonic()
        t0, gen0, busy0, prop0, acc0 = self._last
        gen = self.totals["generation_tokens"]
        prop, acc = s.planner.signals.num_proposed, s.planner.signals.num_accepted
        dt = max(now - t0, 1e-9)
        with self._lock:
            busy = dict(self._busy_total)
            while self._recent and self._recent[0][0] < now - LATENCY_WINDOW_S:
                self._recent.popleft()
            recent = list(self._recent)
        for device, total in busy.items():
            self.busy_frac.labels(model, device).set(min((total - busy0.get(device, 0.0)) / dt,
                                                         1.0))
        kv = {name: int(s.last_kv.get(name, 0)) for name in PRECISIONS}
        lat = _percentiles(recent)
        self._series.append({"t": round(now - s.started, 3), "tok_s": (gen - gen0) / dt,
                             "running": len(eng.running) + eng.num_prefilling,
                             "waiting": len(eng.waiting), "kv": kv,
                             "acceptance": (acc - acc0) / (prop - prop0) if prop > prop0
                             else None, **lat})
        self._last = (now, gen, busy, prop, acc)

    def dashboard(self) -> dict:
        s, eng = self.session, self.session.engine
        points = list(self._series)
        with self._lock:
            ops = list(self._ops)
            recent = list(self._recent)

        def col(key):
            return [p[key] for p in points]

        lat = _percentiles(recent, (50, 90, 99))
        return {**self.labels, "uptime_s": round(time.monotonic() - s.started, 3),
                "totals": {**self.totals, "running": len(eng.running) + eng.num_prefilling,
                           "waiting": len(eng.waiting)},
                "series": {"t": col("t"), "tok_s": col("tok_s"), "running": col("running"),
                           "waiting": col("waiting"),
                           "kv_bytes": {name: [p["kv"][name] for p in points]
                                        for name in PRECISIONS},
                           "acceptance": col("acceptance")},
                "latency": {f"{name}_ms": {f"p{q}": lat.get(f"{name}_p{q}_ms")
                                           for q in (50, 90, 99)}
                            for name in ("ttft", "tpot", "e2e")},
                "latency_series": {"t": col("t"), **{key: col(key) for key in (
                    "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms")}},
                "timeline": [{"device": d, "op": op, "start_s": round(t, 6),
                              "dur_s": round(sec, 6), "batch": b} for d, op, t, sec, b in ops]}


def _device_bytes(by_precision: dict) -> int:
    return sum(v for k, v in by_precision.items() if k not in ("offloaded", "evicted"))


def _percentiles(recent: list, qs=(50, 99)) -> dict:
    """``{ttft_p50_ms: ..., tpot_p99_ms: ...}`` over ``recent`` (None without values)."""
    out = {}
    for i, name in ((1, "ttft"), (2, "tpot"), (3, "e2e")):
        values = [r[i] for r in recent if r[i] is not None]
        for q in qs:
            out[f"{name}_p{q}_ms"] = round(float(np.percentile(values, q)) * 1e3, 3) \
                if values else None
    return out


class _EngineCounters:
    """Counters the engine and the buffer policy keep themselves, read at each scrape."""

    def __init__(self, session, model: str):
        self.session, self.model = session, model

    def collect(self):
        s, m = self.session, self.model
        signals, stats = s.planner.signals, s.pool.stats
        for name, doc, value in (
                ("spec_decode_num_draft_tokens", "Draft tokens proposed", signals.num_proposed),
                ("spec_decode_num_accepted_tokens", "Draft tokens accepted",
                 signals.num_accepted),
                ("buffer_allocations", "Buffer allocations (the buffer policy)",
                 stats.num_allocs),
                ("buffer_alloc_bytes", "Bytes allocated for buffers", stats.alloc_bytes),
                ("buffer_reuses", "Buffers reused from the pool", stats.num_reuses)):
            family = CounterMetricFamily(P + name, doc, labels=["model_name"])
            family.add_metric([m], float(value))
            yield family
