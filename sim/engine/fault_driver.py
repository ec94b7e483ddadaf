"""Applies a run's injected faults to its engine (docs/architecture.md#faults-and-overload):

- a **device failure** takes the device out (nobody takes its lock; the scheduling policy is asked
  again without it), interrupts the steps in flight on it (their work is lost: a decode batch
  runs again, a prefill batch goes back to the head of the queue) and, at ``end_s``, brings it
  back;
- a **KV shrink** lowers the store's device budget, asks the tiering policy at once, then fails
  the youngest admitted requests until what is held and reserved fits again;
- an **allocation cap** (simulated executors; a real one enforces it on its own tensors) fails a
  request whose KV allocation would pass it;
- a **step error** fails the step's requests as the step starts; an executor's ``StepFailed``
  fails the requests it names.

Every request a fault ends fails with a reason naming the fault; the run goes on.
"""

from __future__ import annotations

import math

import numpy as np
import simpy

from sim.engine.faults import FaultSchedule, StepFailed
from sim.engine.state import PENDING
from sim.errors import UserError


class NoDevice(Exception):
    """No device up can take a phase's work (the message says why)."""


class FaultDriver:
    """Contract: used only by the ``Engine`` it is built for; ``counts`` are the run's fault
    counters (``num_lost_steps``, ``num_failed_steps``, ``num_requests_failed``)."""

    def __init__(self, engine, schedule: FaultSchedule):
        self.engine, self.schedule = engine, schedule
        self.env = engine.env
        for name, event in schedule.failures:
            if event.device not in engine.devices:
                raise UserError(f"device {event.device!r} is not one the {engine.executor.name} "
                                f"executor runs on (devices: {', '.join(engine.devices)})",
                                field=f"faults.events.{name}.device")
        self.initial_budget_bytes = engine.store.device_budget_bytes
        self.down_at: dict[str, tuple[float, str]] = {}  # device -> (time, fault name)
        self.in_flight: dict[simpy.Process, tuple[str, ...]] = {}
        self.started = {"any": 0, "prefill": 0, "decode": 0}
        self.counts = {"num_lost_steps": 0, "num_failed_steps": 0, "num_requests_failed": 0}
        self.num_ended = 0

    # -- the run -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the fault timeline (before the engine's processes: a fault at t applies before
        the steps that start at t)."""
        self.env.process(self._timeline())

    def run(self) -> None:
        """Run the engine until every request has ended (or nothing is left to happen): the
        fault timeline alone does not keep the clock going."""
        env, n = self.env, len(self.engine.requests)
        while self.num_ended < n and env.peek() != math.inf:
            env.step()

    def _timeline(self):
        for t in self.schedule.change_times():
            if t > self.env.now:
                yield self.env.timeout(t - self.env.now)
            self._apply(t)

    def _apply(self, t: float) -> None:
        down = self.schedule.down(t)
        for device, name in sorted(down.items()):
            if device not in self.down_at:
                self._device_down(device, name)
        for device in sorted(set(self.down_at) - set(down)):
            self._device_up(device)
        self._set_budget(t)

    # -- devices -----------------------------------------------------------------------------
    def _device_down(self, device: str, name: str) -> None:
        eng = self.engine
        eng.devices[device].down = True
        self.down_at[device] = (self.env.now, name)
        eng.reset_placement()
        for proc, devices in list(self.in_flight.items()):
            if device in devices:
                del self.in_flight[proc]  # one interrupt per step
                proc.interrupt(device)
        eng.wake(prefill=True, decode=True)

    def _device_up(self, device: str) -> None:
        self.engine.devices[device].down = False
        del self.down_at[device]
        self.engine.reset_placement()
        self.engine.wake(prefill=True, decode=True)

    def why_down(self, device: str) -> str:
        t, name = self.down_at[device]
        return f"device {device} failed at t = {t:.6g} s (fault {name!r})"

    # -- the KV budget -----------------------------------------------------------------------
    def _set_budget(self, t: float) -> None:
        eng, store = self.engine, self.engine.store
        new = int(self.schedule.kv_budget(t, self.initial_budget_bytes))
        old = store.device_budget_bytes
        if new == old:
            return
        store.set_device_budget(new)
        if new < old:
            eng.planner.retier(store, eng.running)  # tiering under sudden pressure
            why = f"the KV budget shrank to {new} bytes at t = {t:.6g} s"
            if eng.preempt is not None:  # running requests are preempted rather than failed
                eng.preempt.fit_budget()
            # the youngest admitted first (as vLLM preempts the latest), until it all fits
            # (a request swapped out holds no device memory)
            held = sorted((r for r in store.request_ids()
                           if eng.preempt is None or r not in eng.preempt.swapped),
                          key=lambda r: (eng.state.admitted_s[r], r))
            while store.device_used_bytes + store.reserved_bytes > new and held:
                self.end_request(held.pop(), f"{why} and its KV no longer fits")
            prec = eng.planner.new_block_precision
            for rid in list(eng.waiting):
                total = eng.total_tokens(rid)
                if store.blocks_for(total) * int(store.device_block_bytes[prec]) > new:
                    self.end_request(rid, f"{why}: the request's KV can never fit it")
        eng.wake(prefill=True)

    # -- allocation cap (simulated executors) --------------------------------------------------
    def refuse_allocation(self, rid: int, num_bytes: int, extra_bytes: int = 0) -> bool:
        """Whether allocating ``num_bytes`` more KV for ``rid`` (on top of ``extra_bytes``
        allocated this step) passes the active cap; if so the request fails."""
        cap = self.schedule.alloc_cap(self.env.now)
        used = self.engine.store.device_used_bytes + extra_bytes
        if cap is None or num_bytes <= 0 or used + num_bytes <= cap:
            return False
        self.end_request(rid, f"KV allocation of {num_bytes} bytes failed: {used} of the "
                              f"{int(cap)}-byte allocation cap in use (injected fault)")
        return True

    def capped_growth(self, batch: np.ndarray, emitted: np.ndarray):
        """The rows of a step whose new KV blocks can be allocated; the others fail."""
        eng = self.engine
        if eng.kv_measured or self.schedule.alloc_cap(self.env.now) is None:
            return batch, emitted
        grow = eng.store.growth_bytes(batch, emitted, eng.planner.new_block_precision)
        keep = np.ones(len(batch), dtype=bool)
        extra = 0
        for i in np.flatnonzero(grow > 0).tolist():
            if self.refuse_allocation(int(batch[i]), int(grow[i]), extra):
                keep[i] = False
            else:
                extra += int(grow[i])
        return (batch, emitted) if keep.all() else (batch[keep], emitted[keep])

    # -- steps -------------------------------------------------------------------------------
    def execute(self, plan, locks, devices: tuple[str, ...]):
        """Run one step through the executor, with the faults that hit steps.  Returns its
        ``StepResult``, or None when the step did not run to the end for the requests still
        pending (lost to a device failure, failed, or not started because a device it needs
        went down)."""
        eng = self.engine
        if not locks.usable:
            return None
        self.started["any"] += 1
        self.started[plan.phase] += 1
        name = self.schedule.step_error(self.started, plan.phase)
        if name is not None:
            self.counts["num_failed_steps"] += 1
            n = self.started["any"]
            for rid in [int(r) for r in plan.request_ids]:
                self.end_request(rid, f"executor error at engine step {n} ({plan.phase}; "
                                      f"injected fault {name!r})")
            return None
        proc = self.env.active_process
        self.in_flight[proc] = devices
        try:
            return (yield from eng.executor.execute(self.env, plan))
        except simpy.Interrupt:
            self.counts["num_lost_steps"] += 1
            return None
        except StepFailed as err:
            self.counts["num_failed_steps"] += 1
            for rid, why in err.reasons.items():
                self.end_request(rid, why)
            return err.result
        finally:
            self.in_flight.pop(proc, None)

    def requeue(self, batch: list[int]) -> None:
        """A prefill step that did not run: its requests still pending go back to the head of
        the queue, their KV freed, to be admitted and planned again."""
        eng = self.engine
        back = [rid for rid in batch if eng.state.status[rid] == PENDING]
        for rid in back:
            eng.store.free(rid)
            eng.executor.release(rid)
            eng.planner.forget(rid)
            eng.state.admitted_s[rid] = np.nan
        eng.waiting.extendleft(reversed(back))
        eng.wake(prefill=True)

    def alive(self, batch: np.ndarray) -> np.ndarray:
        """The rows of ``batch`` still pending (and not preempted during the step)."""
        keep = self.engine.state.status[batch] == PENDING
        preempt = self.engine.preempt
        if preempt is not None and preempt.stale:
            keep &= ~np.isin(batch, list(preempt.stale))
        return keep

    def end_request(self, rid: int, reason: str) -> None:
        """Fail a pending request wherever it is (waiting, prefilling, running)."""
        eng = self.engine
        if eng.state.status[rid] != PENDING:
            return
        if rid in eng.store:
            eng.store.free(rid)
            eng.executor.release(rid)
            eng.planner.forget(rid)
        if rid in eng.running:
            eng.running.remove(rid)
        if rid in eng.waiting:
            eng.waiting.remove(rid)
        self.counts["num_requests_failed"] += 1
        eng.fail(rid, reason)
        eng.wake(prefill=True)
