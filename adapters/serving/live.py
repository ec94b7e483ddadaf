"""The engine serving live traffic: request slots, a real-time clock, arrivals from another thread.

The engine (``sim.engine.engine.Engine``) indexes its requests by small integer ids in numpy
columns sized once.  A server's traffic has no end, so its requests live in a fixed number of
*slots*: a request takes a free slot when it arrives, and the slot is reset and reused once the
request has ended and its results were read (``Slots``).  Memory is bounded by the number of
slots, not by the traffic served.

The clock is SimPy's real-time environment (``simpy.rt.RealtimeEnvironment``, ``strict=False``):
an event is processed no earlier than its time on the wall clock.  A real executor measures a
step, then advances the engine clock by the measured time, so the engine clock follows the wall
clock; while the engine is idle, a polling process sleeps in real time and takes arrivals from a
thread-safe queue every ``POLL_S``.  The engine's own work between steps (planning, policies) is
not on its clock, as in ``measure``: while the engine is busy the clock falls behind the wall
clock by that overhead, and catches up when it is idle again.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

import numpy as np
import simpy.rt

from sim.engine.engine import Engine
from sim.engine.state import FAILED, PENDING, RunState

POLL_S = 0.002  # how often an idle engine looks for arrivals (seconds, real time)


class Slots:
    """``capacity`` request slots: the engine's request columns (``prompt_tokens``,
    ``output_tokens``, the ``Requests`` interface) and the free list.  ``output_tokens`` is a
    request's *limit* (``max_tokens``); a request that stops early (EOS, a stop string) has it
    lowered to the tokens it produced, and the engine then retires it."""

    concurrency = None  # arrivals are live, never a closed loop
    think_s = 0.0

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.arrival_s = np.full(capacity, np.nan)
        self.prompt_tokens = np.ones(capacity, dtype=np.int64)
        self.output_tokens = np.ones(capacity, dtype=np.int64)
        self.ticket = np.zeros(capacity, dtype=np.int64)  # which request holds the slot now
        self._free = list(range(capacity - 1, -1, -1))

    def __len__(self) -> int:
        return self.capacity

    def take(self) -> int | None:
        """A free slot, or None when every slot is in use (the server is full)."""
        return self._free.pop() if self._free else None

    def give_back(self, rid: int) -> None:
        self._free.append(rid)

    @property
    def num_free(self) -> int:
        return len(self._free)


class LiveState(RunState):
    """The engine's run state over slots: a slot's columns are reset when it is reused, and
    ``on_end(rid)`` is called (on the engine thread) when a request completes or fails."""

    def __init__(self, capacity: int, on_end: Callable[[int], None]):
        super().__init__(capacity, False)
        self.on_end = on_end

    def reset(self, rid: int) -> None:
        for column in (self.arrival_s, self.admitted_s, self.first_token_s, self.finish_s):
            column[rid] = np.nan
        self.generated[rid] = 0
        self.status[rid] = PENDING
        self.fail_reason.pop(rid, None)

    def fail(self, rid: int, now: float, reason: str) -> None:
        super().fail(rid, now, reason)
        self.on_end(rid)

    def complete(self, rid: int, now: float) -> None:
        super().complete(rid, now)
        self.on_end(rid)

    def abort(self, now: float, error: Exception, reason: str) -> None:
        self.error, self.error_message = error, reason
        for rid in np.nonzero(self.status == PENDING)[0].tolist():
            if not np.isnan(self.arrival_s[rid]):  # (a free slot has no request)
                self.fail(rid, now, reason)

    def finish(self, now: float, store) -> None:
        self.end_s = now


class ServeEngine(Engine):
    """The engine over live arrivals on a real-time clock (module docstring).  ``submit(rid)``
    (any thread) hands it a request whose slot is filled; ``stop()`` (any thread) ends the run
    once the engine is idle and nothing is queued."""

    def __init__(self, planner, requests: Slots, executor, store, *, on_end, on_queued,
                 **kw):
        super().__init__(planner, requests, executor, store,
                         env=simpy.rt.RealtimeEnvironment(factor=1.0, strict=False), **kw)
        self.state = LiveState(len(requests), on_end)
        self.on_queued = on_queued  # (rid) -> None: the request waits for admission
        self.arrivals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.cancels: queue.SimpleQueue[tuple[int, int, str]] = queue.SimpleQueue()
        self.stopping = False

    def submit(self, rid: int) -> None:
        self.arrivals.put(rid)

    def cancel(self, rid: int, ticket: int, reason: str) -> None:
        """End the request holding slot ``rid`` as ``ticket`` early (any thread): a waiting
        one fails with ``reason`` at once; one being prefilled or decoded ends after its current
        step (the caller reports it as failed: its output is cut)."""
        self.cancels.put((rid, ticket, reason))

    def stop(self) -> None:
        self.stopping = True

    def start_arrivals(self) -> None:
        self.env.process(self._live_arrivals())

    def _live_arrivals(self):
        while True:
            while True:
                try:
                    rid = self.arrivals.get_nowait()
                except queue.Empty:
                    break
                self.state.reset(rid)
                self._arrive(rid)
                if self.state.status[rid] != FAILED:
                    self.on_queued(rid)
            self._cancel_pending()
            if self.stopping and self.idle():
                return
            yield self.env.timeout(POLL_S)

    def _cancel_pending(self) -> None:
        """Between steps (the arrival process runs only then): nothing of a step in flight is
        touched; a running request's limit is lowered so the engine retires it next step."""
        while True:
            try:
                rid, ticket, reason = self.cancels.get_nowait()
            except queue.Empty:
                return
            if self.requests.ticket[rid] != ticket or self.state.status[rid] != PENDING:
                continue  # ended meanwhile (its slot may hold another request now)
            if rid in self.waiting:
                self.waiting.remove(rid)
                self.fail(rid, reason)
            else:
                self.requests.output_tokens[rid] = min(int(self.requests.output_tokens[rid]),
                                                       int(self.state.generated[rid]) + 1)

    def idle(self) -> bool:
        return not (self.waiting or self.running or self.num_prefilling)
