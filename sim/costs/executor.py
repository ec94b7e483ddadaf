"""The cost-model executor: predicted step times from a cost model, with shared memory buses."""

from __future__ import annotations

from collections.abc import Callable, Generator
from itertools import groupby
from typing import Any

import simpy

from sim.config.hardware import HardwareProfile
from sim.costs.bus import SharedBus
from sim.costs.cost_model import CoefficientModel, RooflineModel, Segment
from sim.engine.executor import Capabilities, DeviceInfo, StepPlan, StepResult


class CostModelExecutor:
    """Answers each step with the time its cost model predicts.  Consecutive segments on devices
    of one memory bus form one transfer on that bus, so overlapping steps of other processes
    (prefill on one device while decode runs on another) slow each other down by sharing it."""

    name = "sim"
    capabilities = Capabilities()  # predicts times; measures and holds nothing
    attention = None  # the tiering policy observes the synthetic attention model

    def __init__(self, hw: HardwareProfile, cost_model: RooflineModel | CoefficientModel,
                 slowdown: Callable[[str, float], float] | None = None):
        self.hw, self.cost_model = hw, cost_model
        # injected faults: (device, time a step starts) -> how many times longer it takes there
        self.slowdown = slowdown
        self._buses: dict[str, SharedBus] = {}
        self._bus_of = {d.name: d.memory for d in hw.devices}
        # a bus with one device cannot see overlapping work: its steps skip the sharing model
        self._shared = {m.name for m in hw.memories
                        if sum(d.memory == m.name for d in hw.devices) > 1}

    def devices(self) -> tuple[DeviceInfo, ...]:
        return tuple(DeviceInfo(d.name, d.kind, self.hw.bus(d.memory).capacity_bytes, d.memory,
                                d.command_latency_s)
                     for d in self.hw.devices)

    def release(self, request_id: int) -> None:
        pass  # a prediction holds nothing per request

    def report(self) -> None:
        return None

    def _bus(self, env: simpy.Environment, name: str) -> SharedBus:
        bus = self._buses.get(name)
        if bus is None or bus.env is not env:
            bus = self._buses[name] = SharedBus(env, self.hw.bus(name).usable_bytes_per_s)
        return bus

    def execute(self, env: simpy.Environment,
                plan: StepPlan) -> Generator[simpy.Event, Any, StepResult]:
        start = env.now
        segments = self.cost_model.segments(plan)
        if self.slowdown is not None:
            segments = self._slowed(segments, start)
        alone = 0
        for s in segments:
            alone += s.variable_s + s.fixed_s
        buses = [self._bus_of[s.device] for s in segments] if self._shared else ()
        if not self._shared.intersection(buses):
            yield env.timeout(alone)  # nothing can overlap: the roofline time as it is
        else:
            yield from self._shared_bus_steps(env, segments, buses)
        elapsed = env.now - start
        stretch = elapsed / alone if alone > 0 else 0.0
        busy: dict[str, float] = {}
        out = []
        for s in segments:
            seconds = (s.variable_s + s.fixed_s) * stretch
            busy[s.device] = busy.get(s.device, 0.0) + seconds
            out.append((s.device, s.op, seconds))
        return StepResult(elapsed, busy, out)

    def _slowed(self, segments: list[Segment], now: float) -> list[Segment]:
        """Each segment's time x its device's slowdown factor at ``now`` (its bytes unchanged,
        so a slowed device also asks less of a shared bus)."""
        out = []
        for s in segments:
            f = self.slowdown(s.device, now)
            out.append(s if f == 1.0 else Segment(s.device, s.op, s.bytes, s.variable_s * f,
                                                   s.fixed_s * f))
        return out

    def _shared_bus_steps(self, env: simpy.Environment, segments: list, buses: list[str]):
        """Consecutive segments on one bus move their bytes as one transfer on that bus."""
        for bus_name, pairs in groupby(zip(buses, segments), key=lambda pair: pair[0]):
            group = [s for _, s in pairs]
            num_bytes = sum(s.bytes for s in group)
            variable_s = sum(s.variable_s for s in group)
            fixed_s = sum(s.fixed_s for s in group)
            if num_bytes > 0 and variable_s > 0 and bus_name in self._shared:
                bus = self._bus(env, bus_name)
                done = bus.transfer(num_bytes, num_bytes / variable_s)
                try:
                    yield done
                except simpy.Interrupt:  # the step was lost (its device failed)
                    bus.cancel(done)
                    raise
            else:
                fixed_s += variable_s
            if fixed_s > 0:
                yield env.timeout(fixed_s)
