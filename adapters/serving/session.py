"""One served scenario variant: the engine on its own thread, the requests in flight, their
tokens streamed back to the HTTP side as text.

Threads: the engine (``adapters.serving.live``) runs on the main thread (``run_engine``) and is
the only one that touches the engine, the executor and the KV store; the HTTP server runs an
asyncio loop on another thread.  The HTTP side hands a request over with ``submit`` (a free
slot, filled, queued for the engine) and receives its events on an ``asyncio.Queue`` through
``loop.call_soon_threadsafe``:
``("queued",)``, ``("delta", text, tokens)``, then ``("done", finish_reason, usage)`` or
``("error", status, message)``.  Every request ends with exactly one of the last two.

Stopping: the executor generates greedily or samples (``adapters.serving.sampling``); after each
step (``_Streaming``) the new tokens of each request are checked for the end-of-sequence token
(unless ``ignore_eos``) and the request's stop strings; a request that stops early has its limit
lowered to the tokens it kept, and the engine retires it with that step.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adapters.serving.live import ServeEngine, Slots
from adapters.serving.sampling import Sampler, Sampling
from sim.engine.faults import StepFailed
from sim.engine.state import COMPLETED
from sim.run.backends import load_backend
from sim.run.runner import assemble
from sim.run.setup import RunSetup


class ServerBusy(Exception):
    """No room: every request slot is taken (HTTP 503), or the server is shutting down."""


@dataclass(eq=False)
class Job:
    """One request, from the HTTP side's submission to its end."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    received: float = field(default_factory=time.monotonic)
    text_prompt: str | None = None  # recorded with --record-text
    # filled on the engine thread
    ticket: int = 0
    rid: int = -1
    kept: list[int] = field(default_factory=list)  # output token ids streamed
    text: str = ""  # their text, stop string excluded
    sent_chars: int = 0
    finish_reason: str | None = None
    cancelled: str | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    ended_at: float | None = None
    counted: int = 0  # output tokens the metrics have counted (``ServeMetrics.step``)
    counted_at: float = 0.0  # when they last counted some

    def post(self, *event: Any) -> None:
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the HTTP side has shut down: nobody is listening
                pass


class Session:
    """Contract: ``start`` once, ``submit`` from any thread until ``close``; ``close`` ends every
    request in flight (completed, or failed with the reason) and returns once the engine thread
    has stopped.  ``hooks`` observe requests and steps (metrics, recording): ``on_step(plan,
    result, now_wall)`` and ``on_end(job, state_row)`` are called on the engine thread."""

    def __init__(self, setup: RunSetup, backend: str, *, max_waiting: int,
                 on_step: Callable | None = None, on_end: Callable | None = None,
                 seed: int = 0):
        scn = setup.scenario
        self.scenario, self.backend = scn, backend
        self.max_waiting = max_waiting
        # in the engine at once: the batch, the waiting room, and room for arrivals in transit
        self.slots = Slots(2 * (scn.engine.max_batch + max_waiting) + 2)
        self._lock = threading.Lock()
        self._tickets = itertools.count(1)
        self.jobs: dict[int, Job] = {}
        self.closing: str | None = None  # why new requests are refused
        self.error: str | None = None  # why the engine stopped (a policy failure)
        self._hooks = (on_step or (lambda *a: None), on_end or (lambda *a: None))
        factory = load_backend(backend)
        self.raw = None

        def make_executor(store, pool):
            self.raw = factory(scn, setup.hardware, self.slots, store, setup.base_dir, pool)
            self.raw.prompts = [[] for _ in range(len(self.slots))]
            return _Streaming(self.raw, self)

        built = assemble(setup, self.slots, backend=backend, make_executor=make_executor,
                         engine_cls=ServeEngine, on_end=self._ended, on_queued=self._queued,
                         max_waiting=max_waiting, faults=None)
        self.engine: ServeEngine = built.engine
        self.planner, self.pool, self.store = built.planner, built.pool, built.store
        self.tokenizer = getattr(self.raw, "tokenizer", None)
        self.eos_id = getattr(self.tokenizer, "eos_id", None)
        self.sampler = Sampler(self.raw.device, seed)
        self.raw.sampler = self.sampler
        self.max_context = setup.model.max_context_tokens
        self.started = time.monotonic()
        self.last_kv: dict[str, int] = {}
        self.last_kv_fp16 = 0

    # -- the HTTP side -----------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue ``job`` for the engine; ``ServerBusy`` when it cannot be taken."""
        with self._lock:
            if self.closing or self.error:
                raise ServerBusy(self.error or self.closing)
            rid = self.slots.take()
            if rid is None:
                raise ServerBusy("every request slot is in use")
            job.ticket, job.rid = next(self._tickets), rid
            self.jobs[rid] = job
        self.slots.ticket[rid] = job.ticket
        self.slots.prompt_tokens[rid] = len(job.prompt_ids)
        self.slots.output_tokens[rid] = job.max_tokens
        self.raw.prompts[rid] = job.prompt_ids
        self.sampler.set(rid, job.sampling)
        self.engine.submit(rid)

    def cancel(self, job: Job, reason: str) -> None:
        """End ``job`` early (the client went away); it is reported failed with ``reason``."""
        if job.ended_at is None and job.cancelled is None:
            job.cancelled = reason
            self.engine.cancel(job.rid, job.ticket, reason)

    def begin_drain(self, reason: str = "the server is shutting down") -> None:
        """Stop admitting: new requests are refused; those in flight go on."""
        with self._lock:
            self.closing = self.closing or reason

    def close(self) -> None:
        """End what is still in flight (failed: the server is shutting down) and stop the
        engine: ``run_engine`` returns once the requests in flight have ended."""
        self.begin_drain()
        with self._lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            self.cancel(job, "the server shut down before the request finished")
        self.engine.stop()

    @property
    def num_in_flight(self) -> int:
        return len(self.jobs)

    # -- the engine thread -------------------------------------------------------------------
    def run_engine(self) -> None:
        """The engine's run, on the calling thread (the main thread: torch's CPU threads run
        a third slower when their parallel regions start from another thread, measured), until
        ``close`` or a failure."""
        try:
            state = self.engine.run()
            if state.error_message:
                self.error = f"the engine stopped: {state.error_message}"
        except Exception as err:  # a bug: nobody may wait forever for it
            traceback.print_exc()
            self.error = f"the engine stopped on an internal error: {type(err).__name__}: {err}"
            with self._lock:
                jobs, self.jobs = list(self.jobs.values()), {}
            for job in jobs:
                job.ended_at = time.monotonic()
                job.post("error", 500, self.error)

    def _queued(self, rid: int) -> None:
        self.jobs[rid].post("queued")

    def after_step(self, plan, result) -> None:
        """Stream each request's new tokens; stop the ones that hit EOS or a stop string."""
        now = time.monotonic()
        if result.kv_bytes_by_precision is not None:
            self.last_kv, self.last_kv_fp16 = result.kv_bytes_by_precision, \
                result.kv_fp16_equiv_bytes
        out = self.slots.output_tokens
        for rid in (int(r) for r in plan.request_ids):
            job = self.jobs.get(rid)
            tokens = self.raw.tokens.get(rid)
            if job is None or tokens is None or job.finish_reason is not None:
                continue
            limit = int(out[rid])
            new = tokens[len(job.prompt_ids) + len(job.kept):len(job.prompt_ids) + limit]
            if not new:
                continue
            if self.eos_id is not None and not job.ignore_eos and self.eos_id in new:
                new = new[:new.index(self.eos_id) + 1]
                job.finish_reason = "stop"
            job.kept.extend(new)
            self._stream_text(job, now, len(new))
            if job.finish_reason is None and len(job.kept) >= job.max_tokens:
                job.finish_reason = "length"
            if job.finish_reason is not None:
                out[rid] = min(limit, len(job.kept))  # the engine retires it with this step
        self._hooks[0](plan, result, now)

    def _stream_text(self, job: Job, now: float, num_new: int) -> None:
        if job.first_token_at is None:
            job.first_token_at = now
        job.last_token_at = now
        if self.tokenizer is None:
            job.post("delta", "", num_new)
            return
        ids = job.kept[:-1] if job.kept[-1:] == [self.eos_id] and not job.ignore_eos \
            else job.kept
        text = self.tokenizer.decode(ids, skip_special=True)
        for stop in job.stop:  # the earliest stop string, wherever it ends
            at = text.find(stop, max(job.sent_chars - len(stop), 0))
            if at >= 0:
                text, job.finish_reason = text[:at], "stop"
                break
        hold = 0
        if job.finish_reason is None:  # hold back what may be a stop string's start
            hold = max((len(s) - 1 for s in job.stop), default=0)
            if text.endswith("\ufffd"):  # or half a character
                hold = max(hold, 1)
        job.text = text
        end = len(text) - hold if job.finish_reason is None else len(text)
        delta = text[job.sent_chars:max(end, job.sent_chars)]
        job.sent_chars += len(delta)
        job.post("delta", delta, num_new)

    def _ended(self, rid: int) -> None:
        """The engine ended request ``rid``: its final event, its slot freed for reuse."""
        job = self.jobs.get(rid)
        if job is None:
            return
        st = self.engine.state
        job.ended_at = time.monotonic()
        completed = st.status[rid] == COMPLETED and job.cancelled is None
        if completed:
            if job.finish_reason is None:  # (the engine's limit ended it)
                job.finish_reason = "length"
            tail = job.text[job.sent_chars:]
            if tail:
                job.sent_chars += len(tail)
                job.post("delta", tail, 0)
            job.post("done", job.finish_reason, self.usage(job))
        else:
            reason = job.cancelled or st.fail_reason.get(rid, "failed")
            job.finish_reason = "error"
            job.post("error", http_status(reason, job.cancelled is not None), reason)
        row = {"arrival_s": float(st.arrival_s[rid]), "admitted_s": float(st.admitted_s[rid]),
               "first_token_s": float(st.first_token_s[rid]),
               "finish_s": float(st.finish_s[rid]), "completed": completed,
               "reason": None if completed else (job.cancelled or st.fail_reason.get(rid))}
        if rid not in self.raw.kv:  # what its tensors held is freed: the gauges say so at once
            self.last_kv = self.raw.kv.bytes_by_precision()
            self.last_kv_fp16 = self.raw.kv.fp16_equiv_bytes()
        self._hooks[1](job, row)
        self.raw.finished.pop(rid, None)
        self.raw.accepted_log.pop(rid, None)
        self.raw.proposed_log.pop(rid, None)
        self.sampler.forget(rid)
        with self._lock:
            del self.jobs[rid]
            self.slots.give_back(rid)

    def usage(self, job: Job) -> dict:
        return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": len(job.kept),
                "total_tokens": len(job.prompt_ids) + len(job.kept)}


def http_status(reason: str, cancelled: bool) -> int:
    """The HTTP status of a request the engine failed."""
    if reason.startswith("rejected: waiting queue full"):
        return 503
    if "exceed the model's context" in reason or "more than the whole budget" in reason:
        return 413
    return 499 if cancelled else 500


class _Streaming:
    """The real executor, with the session looking at each step's result before the engine
    does (the executor protocol: ``sim.engine.executor``)."""

    def __init__(self, inner, session: Session):
        self.inner, self.session = inner, session
        self.name, self.capabilities = inner.name, inner.capabilities

    @property
    def attention(self):
        return self.inner.attention

    def devices(self):
        return self.inner.devices()

    def execute(self, env, plan):
        try:
            result = yield from self.inner.execute(env, plan)
        except StepFailed as failed:  # the others' tokens still stream
            if failed.result is not None:
                self.session.after_step(plan, failed.result)
            raise
        self.session.after_step(plan, result)
        return result

    def release(self, request_id: int) -> None:
        self.inner.release(request_id)

    def report(self):
        return self.inner.report()


def percentile(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None
