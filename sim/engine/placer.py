"""Where the engine's steps run: the scheduling policy's placement (asked with the devices' loads
and the op estimates, once for a policy that does not observe load), the device locks a step
takes, and when each device should be free again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from policies import DeviceLoad, Placement, SchedulingObservation
from sim.config.policy_registry import observes_load
from sim.engine.devices import DeviceLock, acquire
from sim.engine.fault_driver import NoDevice
from sim.engine.policy_call import ask
from sim.errors import InfeasibleDecision

if TYPE_CHECKING:
    from sim.engine.engine import Engine


class Placer:
    """The devices of one ``Engine``'s executor: ``locks`` by name (the engine's ``devices``)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        infos = engine.executor.devices()
        self.locks = {d.name: DeviceLock(engine.env) for d in infos}
        self.kinds = {d.name: d.kind for d in infos}
        # splitting a decode step's ops across devices hands work over once per layer
        layers = engine.planner.model.num_layers
        self.handoff = {d.name: d.handoff_s * layers for d in infos}
        self.busy_until = {d.name: 0.0 for d in infos}  # predicted, for scheduling
        self._estimates: dict[tuple[str, str], float] = {}
        self._fixed: Placement | None = None
        self._locks_of: dict[tuple[str, ...], list[DeviceLock]] = {}  # devices -> locks, sorted

    def reset(self) -> None:
        """The devices up changed: the scheduling policy is asked again."""
        self._fixed = None

    def placement(self, needs) -> Placement:
        """Ask the scheduling policy (the devices up, their loads, the op estimates); raises
        ``NoDevice`` when a device ``needs(placement)`` names is down or none is up."""
        placement = self._fixed
        if placement is None:
            placement = self._ask()
        faults = self.engine.faults
        if faults is not None:
            for device in needs(placement):
                if self.locks[device].down:
                    raise NoDevice(f"{faults.why_down(device)} and scheduling policy "
                                   f"{self.engine.planner.scheduling.kind!r} placed work on it")
        return placement

    def _ask(self) -> Placement:
        eng, locks = self.engine, self.locks
        busy = eng.state.device_busy_s
        now = max(eng.env.now, 1e-12)
        up = [name for name, lock in locks.items() if not lock.down]
        if not up:
            raise NoDevice("every device has failed: " + "; ".join(
                eng.faults.why_down(d) for d in locks))
        loads = tuple(DeviceLoad(name, self.kinds[name], len(locks[name].waiters),
                                 busy.get(name, 0.0), min(busy.get(name, 0.0) / now, 1.0),
                                 max(self.busy_until[name] - eng.env.now, 0.0),
                                 self.handoff[name])
                      for name in up)
        head = int(eng.requests.prompt_tokens[eng.waiting[0]]) if eng.waiting else 0
        estimates = eng.planner.op_estimates(eng.store, eng.running, head, up)
        self._estimates = {(e.op, e.device): e.seconds for e in estimates}
        obs = SchedulingObservation(loads, len(eng.waiting), len(eng.running), estimates)
        scheduling = eng.planner.scheduling
        placement = ask(scheduling, "scheduling", obs)
        for device in placement.devices:
            if device not in locks:
                raise InfeasibleDecision(f"scheduling policy {scheduling.kind!r} placed work "
                                         f"on unknown device {device!r} (devices: "
                                         f"{', '.join(locks)})")
        if not observes_load(scheduling):
            self._fixed = placement
        return placement

    def expect(self, *ops: tuple[str, str]) -> None:
        """Record when each device should be free again (the estimates the policy saw), for the
        scheduling policy's next question (none is asked of a fixed placement without faults)."""
        if self._fixed is not None and self.engine.faults is None:
            return
        busy_until, now = self.busy_until, self.engine.env.now
        for op, device in ops:
            seconds = self._estimates.get((op, device), 0.0)
            busy_until[device] = max(busy_until[device], now) + seconds

    def acquire(self, devices: tuple[str, ...]):
        """Take every named device's lock (``sim.engine.devices.acquire``) -> ``Held``."""
        locks = self._locks_of.get(devices)
        if locks is None:
            locks = self._locks_of[devices] = [self.locks[d] for d in sorted(set(devices))]
        return acquire(locks)
