"""Injected faults at run time: the schedule a scenario's ``faults:`` block describes
(``sim.config.faults``), asked by time, and the exception an executor raises when a step fails
for some of its requests.  The engine applies the schedule (``sim.engine.fault_driver``); executors
ask it for their device's slowdown and the KV allocation cap."""

from __future__ import annotations

from sim.config.faults import AllocCap, DeviceFailure, FaultsConfig, KVShrink, SlowDevice, StepError


class StepFailed(Exception):
    """A step failed for the requests in ``reasons`` (request id -> reason); ``result``, when
    not None, is what the step did for the others (a ``StepResult`` whose per-row arrays cover
    every row of the plan).  None: the others are untouched and run again in a later step."""

    def __init__(self, reasons: dict[int, str], result=None):
        self.reasons, self.result = reasons, result
        super().__init__("; ".join(f"request {rid}: {why}" for rid, why in reasons.items()))


class FaultSchedule:
    """Contract: a pure function of the configuration and the time asked about; an empty
    schedule (``not schedule``) answers factor 1, no cap and no step errors."""

    def __init__(self, cfg: FaultsConfig):
        self.cfg = cfg
        self.slow = [e for _, e in cfg.of_kind(SlowDevice)]
        self.failures = cfg.of_kind(DeviceFailure)
        self.shrinks = cfg.of_kind(KVShrink)
        self.caps = [e for _, e in cfg.of_kind(AllocCap)]
        self.step_errors = cfg.of_kind(StepError)

    def __bool__(self) -> bool:
        return bool(self.cfg)

    # -- asked by executors ----------------------------------------------------------------
    def slow_factor(self, device: str, t: float) -> float:
        """How many times longer the device's steps take when started at ``t``."""
        factor = 1.0
        for e in self.slow:
            if e.device == device and e.active(t):
                factor *= e.factor
        return factor

    def alloc_cap(self, t: float) -> float | None:
        """The KV bytes allocations may reach at ``t`` (the tightest active cap), or None."""
        caps = [e.cap_bytes for e in self.caps if e.active(t)]
        return min(caps) if caps else None

    # -- asked by the engine ---------------------------------------------------------------
    def kv_budget(self, t: float, initial_bytes: float) -> float:
        """The device KV budget at ``t``: the tightest active shrink, never above the run's."""
        return min([initial_bytes] + [e.budget(initial_bytes) for _, e in self.shrinks
                                      if e.active(t)])

    def down(self, t: float) -> dict[str, str]:
        """Devices down at ``t`` -> the event's name."""
        return {e.device: name for name, e in self.failures if e.active(t)}

    def change_times(self) -> list[float]:
        """Every time at which the devices up or the KV budget change, in order."""
        times = set()
        for _, e in self.failures + self.shrinks:
            times.add(e.start_s)
            if e.end_s is not None:
                times.add(e.end_s)
        return sorted(times)

    def step_error(self, started: dict[str, int], phase: str) -> str | None:
        """The name of the step-error event that fires on the step just started (``started``:
        steps started so far, "any" and per phase, this one included), else None."""
        for name, e in self.step_errors:
            if started[e.phase] == e.at_step and e.phase in ("any", phase):
                return name
        return None
