"""The engine: SimPy processes for arrivals, prefill and decode, with continuous batching.

Each step, as in nano-vllm's engine: schedule (place the phases on devices, admit arrived requests
FCFS while the batch and the KV budget allow, let the planner ask the policies for a ``StepPlan``)
-> run (the executor takes the step's predicted or measured time) -> postprocess (record, credit
the emitted tokens, retire finished requests).  Prefill and decode are separate processes; when
their devices differ they overlap (and share a memory bus if the devices do), when they share a
device they take turns on it.  Injected faults (``sim.engine.fault_driver``) and a bounded waiting
queue (``max_waiting``) end requests early, each failed with a reason.  ``preemption``: see
``sim.engine.preemption``.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import simpy

from sim.config.policy_registry import observes_blocks
from sim.engine.buffer_pool import BufferPool
from sim.engine.devices import release
from sim.engine.executor import Executor, StepPlan, StepResult
from sim.engine.fault_driver import FaultDriver, NoDevice
from sim.engine.faults import FaultSchedule
from sim.engine.kv_store import Admission, PagedKVStore
from sim.engine.placer import Placer
from sim.engine.planner import Planner
from sim.engine.preemption import Preemptor
from sim.engine.state import PENDING, RunState
from sim.engine.workload import Requests
from sim.errors import PolicyFailure


class Engine:
    """One run of one scenario variant on one executor.  ``run()`` returns the ``RunState``,
    in which every request ends completed or failed with a reason."""

    def __init__(self, planner: Planner, requests: Requests, executor: Executor,
                 store: PagedKVStore, *, max_batch: int, max_prefill_tokens: int,
                 max_context_tokens: int, record_trace: bool = False, on_done=None,
                 max_waiting: int | None = None, faults: FaultSchedule | None = None,
                 preemption: str = "none", env: simpy.Environment | None = None):
        self.env = env if env is not None else simpy.Environment()
        self.planner, self.requests, self.executor, self.store = planner, requests, executor, store
        self.max_batch, self.max_prefill_tokens = max_batch, max_prefill_tokens
        self.max_context_tokens, self.max_waiting = max_context_tokens, max_waiting
        self.num_rejected = 0  # arrivals turned away by a full waiting queue
        self.state = RunState(len(requests), record_trace)
        self.placer = Placer(self)
        self.devices = self.placer.locks
        self.buffers = BufferPool(planner.buffers)
        self.waiting: deque[int] = deque()
        self.num_prefilling = 0
        self.running: list[int] = []
        self._next_closed = 0
        self._wake_prefill = self.env.event()
        self._wake_decode = self.env.event()
        self._on_done = on_done or (lambda n=1: None)  # progress callback, one call per request
        self.kv_measured = executor.capabilities.reports_kv_bytes
        self.faults = FaultDriver(self, faults) if faults else None
        self.preempt = Preemptor(self, preemption) if preemption != "none" else None

    # -- arrivals ----------------------------------------------------------------------------
    def run(self) -> RunState:
        try:
            self.planner.retier(self.store, [])  # the precision new blocks are written at
            if self.faults is not None:
                self.faults.start()
            self.start_arrivals()
            self.env.process(self._prefill_loop())
            self.env.process(self._decode_loop())
            if self.faults is None:
                self.env.run()
            else:
                self.faults.run()
        except PolicyFailure as err:  # a bug in a policy ends the run; nobody is lost
            step = sum(self.state.num_steps.values()) + 1
            left = int(np.count_nonzero(self.state.status == PENDING))
            self.state.abort(self.env.now, err, f"{err} (at engine step {step}, decode step "
                                                f"{self.planner.decode_steps}, t = "
                                                f"{self.env.now:.6g} s on the engine clock)")
            self._on_done(left)
        self.state.finish(self.env.now, self.store)
        return self.state

    def start_arrivals(self) -> None:
        """The requests' arrivals: open (at their times) or a closed loop of users.  A server
        replaces it with requests arriving live (``adapters.serving.live``)."""
        if self.requests.concurrency is None:
            self.env.process(self._open_arrivals())
        else:
            for _ in range(min(self.requests.concurrency, len(self.requests))):
                self._next_user_request()

    def _open_arrivals(self):
        for rid, t in enumerate(self.requests.arrival_s):
            if t > self.env.now:
                yield self.env.timeout(t - self.env.now)
            self._arrive(rid)

    def _next_user_request(self) -> None:
        if self._next_closed < len(self.requests):
            self._next_closed += 1
            self._arrive(self._next_closed - 1)

    def _user_done(self) -> None:
        if self.requests.concurrency is None:
            return
        # through an event even with no think time: a run of failures must not recurse
        self.env.timeout(self.requests.think_s).callbacks.append(
            lambda _e: self._next_user_request())

    def total_tokens(self, rid: int) -> int:
        return int(self.requests.prompt_tokens[rid]) + int(self.requests.output_tokens[rid])

    def _arrive(self, rid: int) -> None:
        self.state.arrival_s[rid] = self.env.now
        total = self.total_tokens(rid)
        if total > self.max_context_tokens:
            return self.fail(rid, f"{total} tokens exceed the model's context of "
                                  f"{self.max_context_tokens}")
        if self.store.can_admit(total, self.planner.new_block_precision) is Admission.NEVER:
            need = self.store.blocks_for(total) * int(
                self.store.device_block_bytes[self.planner.new_block_precision])
            return self.fail(rid, f"needs {need} bytes of KV cache, more than the whole budget "
                                  f"of {self.store.device_budget_bytes}")
        if self.max_waiting is not None:
            # the waiting room: requests waiting beyond the free batch slots
            free = self.max_batch - len(self.running) - self.num_prefilling
            if len(self.waiting) - max(free, 0) >= self.max_waiting:
                self.num_rejected += 1
                return self.fail(rid, f"rejected: waiting queue full (max_waiting "
                                      f"{self.max_waiting})")
        self.waiting.append(rid)
        self.wake(prefill=True)

    def fail(self, rid: int, reason: str) -> None:
        self.state.fail(rid, self.env.now, reason)
        self._ended()

    def _ended(self) -> None:
        self._on_done()
        if self.faults is not None:
            self.faults.num_ended += 1
        self._user_done()

    def wake(self, prefill: bool = False, decode: bool = False) -> None:
        if prefill and not self._wake_prefill.triggered:
            self._wake_prefill.succeed()
        if decode and not self._wake_decode.triggered:
            self._wake_decode.succeed()

    # -- prefill -----------------------------------------------------------------------------
    def _head_fits(self) -> bool:
        return (bool(self.waiting) and len(self.running) + self.num_prefilling < self.max_batch
                and self._fits(self.waiting[0]))

    def _fits(self, rid: int) -> bool:
        prec = self.planner.new_block_precision
        if self.preempt is not None:
            return self.preempt.fits(rid, prec)
        return self.store.can_admit(self.total_tokens(rid), prec) is Admission.OK

    def _admit_batch(self) -> list[int]:
        batch: list[int] = []
        tokens = 0
        prec = self.planner.new_block_precision
        while (self.waiting
               and len(self.running) + self.num_prefilling + len(batch) < self.max_batch):
            rid = self.waiting[0]
            prompt = int(self.requests.prompt_tokens[rid]) if self.preempt is None else \
                self.preempt.prefill_tokens(rid)
            if batch and tokens + prompt > self.max_prefill_tokens:
                break
            if not self._fits(rid):
                break  # FCFS: the head waits for memory, nobody overtakes it
            if self.preempt is not None and self.preempt.swap_in(rid):
                self.waiting.popleft()  # swapped out, copied back: it rejoins the running set
                continue
            if self.faults is not None and not self.kv_measured and \
                    self.faults.refuse_allocation(rid, self.store.blocks_for(prompt) * int(
                        self.store.device_block_bytes[prec])):
                continue  # an injected allocation failure ended it
            admit = self.store.admit if self.preempt is None else self.preempt.admit
            admit(rid, prompt, self.total_tokens(rid), prec)
            self.waiting.popleft()
            if np.isnan(self.state.admitted_s[rid]):  # a preempted request keeps its first
                self.state.admitted_s[rid] = self.env.now
            batch.append(rid)
            tokens += prompt
        return batch

    def _prefill_loop(self):
        while True:
            if not self._head_fits():
                self._wake_prefill = self.env.event()
                yield self._wake_prefill
                continue
            try:
                placement = self.placer.placement(lambda p: (p.prefill,))
            except NoDevice as err:
                for rid in list(self.waiting):
                    self.faults.end_request(rid, str(err))
                continue
            locks = yield from self.placer.acquire((placement.prefill,))
            batch = self._admit_batch() if locks.usable else []  # once the device is ours
            if batch:
                self.num_prefilling += len(batch)
                plan = self.planner.prefill_plan(
                    batch, self.requests, self.store, placement, self.buffers,
                    None if self.preempt is None else self.preempt.prefill_array(batch))
                self.placer.expect(("prefill", placement.prefill))
                result = yield from (self.executor.execute(self.env, plan) if self.faults is None
                                     else self.faults.execute(plan, locks, (placement.prefill,)))
                self.num_prefilling -= len(batch)
                if result is None:  # lost: planned again from the queue
                    self.faults.requeue(batch)
                    batch = []
                else:
                    self._record(plan, result)
                    if self.faults is not None:
                        batch = [r for r in batch if self.state.status[r] == PENDING]
                    for rid in batch:  # the prefill pass emits each request's first token
                        if np.isnan(self.state.first_token_s[rid]):  # (not a recompute's)
                            self.state.first_token_s[rid] = self.env.now
            release(locks)
            if batch:
                self._advance(np.array(batch), np.ones(len(batch), dtype=np.int64),
                              joining=True)

    # -- decode ------------------------------------------------------------------------------
    def _decode_loop(self):
        """One decode step per turn: schedule (devices, batch, plan) -> run -> postprocess."""
        while True:
            if not self.running:
                self._wake_decode = self.env.event()
                yield self._wake_decode
                continue
            try:
                plan, emitted, locks = yield from self._schedule_decode()
            except NoDevice as err:
                for rid in list(self.running):
                    self.faults.end_request(rid, str(err))
                continue
            if plan is None:
                continue
            result = yield from (self.executor.execute(self.env, plan) if self.faults is None
                                 else self.faults.execute(plan, locks, self._devices_of(plan)))
            release(locks)
            if result is None:
                self.planner.replan(plan)  # lost: the running requests take another step
            else:
                self._postprocess_decode(plan, emitted, result)

    def _draft_device(self, plan: StepPlan) -> str | None:
        if not plan.draft_len:
            return None
        return self.planner.limits.draft_device or plan.placement.decode_ffn

    def _devices_of(self, plan: StepPlan) -> tuple[str, ...]:
        """The devices a decode step runs on (a failure of any of them loses it)."""
        p = plan.placement
        return tuple(d for d in (p.decode_attention, p.decode_ffn, self._draft_device(plan)) if d)

    def _schedule_decode(self):
        """Take the devices the placement names, then plan the step over everyone running
        (re-tiering first when due); returns the plan, the drawn tokens each sequence emits and
        the locks held (no plan when a device it needs failed meanwhile or nobody is left)."""
        placement = self.placer.placement(lambda p: (p.decode_attention, p.decode_ffn))
        locks = yield from self.placer.acquire((placement.decode_attention, placement.decode_ffn))
        usable = locks.usable
        if usable and self.running and self.preempt is not None:
            self.preempt.make_room()  # (may preempt requests)
        if not (usable and self.running):
            release(locks)
            return None, None, None
        batch = np.array(self.running, dtype=np.int64)  # taken once the devices are ours
        self.planner.maybe_retier(self.store, self.running)
        plan, emitted = self.planner.decode_plan(batch, self.store, placement, self.buffers)
        if plan.draft_len:
            draft_device = self._draft_device(plan)
            if self.devices[draft_device].down:  # (only with faults) nowhere to draft
                release(locks)
                raise NoDevice(f"{self.faults.why_down(draft_device)} and the draft model runs "
                               "on it (speculation.draft_device)")
            if self.devices[draft_device] not in locks:
                more = yield from self.placer.acquire((draft_device,))
                locks.extend(more)
                locks.complete &= more.complete
        self.placer.expect(("decode_attention", placement.decode_attention),
                           ("decode_ffn", placement.decode_ffn))
        return plan, emitted, locks

    def _postprocess_decode(self, plan: StepPlan, emitted: np.ndarray,
                            result: StepResult) -> None:
        batch = plan.request_ids
        measured, proposed = result.emitted, result.proposed
        if self.faults is not None:  # requests a fault ended during the step drop out
            keep = self.faults.alive(batch)
            if not keep.all():
                batch, emitted = np.asarray(batch)[keep], emitted[keep]
                measured = None if measured is None else measured[keep]
                proposed = None if proposed is None else proposed[keep]
        if measured is not None:  # measured acceptance replaces the drawn one
            emitted = measured
            if plan.draft_len:
                self.planner.record_acceptance(proposed, emitted - 1)
        self._record(plan, result)
        self._advance(batch, emitted)

    def _record(self, plan: StepPlan, result: StepResult) -> None:
        self.planner.observe(plan, result)
        self.state.record_step(plan, result, self.env.now)
        if result.kv_bytes_by_precision is not None:
            self.state.observe_kv_bytes(result.kv_bytes_by_precision,
                                        result.kv_fp16_equiv_bytes, self.env.now)

    def _advance(self, batch: np.ndarray, emitted: np.ndarray, joining: bool = False) -> None:
        """Credit emitted tokens (capped at each request's output length); retire the done.
        ``joining``: the batch has just been prefilled and joins the decode set."""
        if self.faults is not None:
            batch, emitted = self.faults.capped_growth(batch, emitted)
        if not self.kv_measured:
            self.store.layout.step_ended(batch, emitted)  # before emitted is capped
        wanted, generated = self.requests.output_tokens[batch], self.state.generated[batch]
        emitted = np.minimum(emitted, wanted - generated)
        generated += emitted
        self.state.generated[batch] = generated
        self.store.append_tokens_many(batch, emitted, self.planner.new_block_precision)
        is_done = generated >= wanted
        done = batch[is_done]
        if joining:
            self.running.extend(batch[~is_done].tolist())
            # Tier the new prompt blocks at once (in the executor's layout the decision reaches
            # each request at the end of its next step: ``TokenTailLayout.apply``).
            if observes_blocks(self.planner.tiering):
                self.planner.retier(self.store, self.running)
        if not self.kv_measured:
            self.state.observe_kv(self.store, self.env.now)
        if len(done):
            done_set = set(done.tolist())
            if not joining:
                self.running = [r for r in self.running if r not in done_set]
            for rid in done.tolist():
                self.store.free(rid)
                self.executor.release(rid)
                self.planner.forget(rid)
                self.state.complete(rid, self.env.now)
                self._ended()
            self.wake(prefill=True)
        if self.running:
            self.wake(decode=True)

    # -- devices -----------------------------------------------------------------------------
    def reset_placement(self) -> None:
        """The devices up changed: the scheduling policy is asked again."""
        self.placer.reset()
