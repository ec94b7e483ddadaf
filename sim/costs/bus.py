"""A memory bus shared by the devices on it: processor sharing with max-min fairness, in SimPy.

Each transfer has a byte count and a demand (the rate it would use alone: bytes / its roofline
time, so a compute-bound step asks for less than the bus).  While transfers overlap, the bus's
usable bandwidth is water-filled among them: none gets more than it demands, the rest share what
is left equally.  Alone, a transfer takes exactly bytes / demand, i.e. its roofline time.
"""

from __future__ import annotations

import itertools
import math

import simpy


def water_fill(demands: list[float], capacity: float) -> list[float]:
    """Max-min fair rates: each gets min(demand, fair share of what the smaller ones left)."""
    order = sorted(range(len(demands)), key=demands.__getitem__)
    rates = [0.0] * len(demands)
    left, n = capacity, len(demands)
    for i, j in enumerate(order):
        rates[j] = min(demands[j], left / (n - i))
        left -= rates[j]
    return rates


class SharedBus:
    """Contract: ``transfer`` returns an event that fires when the bytes have moved; the sum of
    the rates given at any moment never exceeds ``capacity_bytes_per_s``."""

    def __init__(self, env: simpy.Environment, capacity_bytes_per_s: float):
        self.env = env
        self.capacity_bytes_per_s = capacity_bytes_per_s
        self._jobs: dict[int, list] = {}  # id -> [remaining bytes, demand, rate, event]
        self._ids = itertools.count()
        self._last_s = 0.0
        self._version = 0
        self.max_concurrent = 0

    def transfer(self, num_bytes: float, demand_bytes_per_s: float) -> simpy.Event:
        done = self.env.event()
        if num_bytes <= 0:
            done.succeed()
            return done
        self._advance()
        self._jobs[next(self._ids)] = [num_bytes, demand_bytes_per_s, 0.0, done]
        self.max_concurrent = max(self.max_concurrent, len(self._jobs))
        self._reschedule()
        return done

    def cancel(self, done: simpy.Event) -> None:
        """Stop the transfer ``transfer`` returned ``done`` for (its step was lost): its bytes
        stop taking bandwidth; ``done`` never fires.  A finished transfer is left alone."""
        key = next((k for k, job in self._jobs.items() if job[3] is done), None)
        if key is None:
            return
        self._advance()
        del self._jobs[key]
        self._version += 1  # the pending wake-up is stale
        if self._jobs:
            self._reschedule()

    def _advance(self) -> None:
        dt = self.env.now - self._last_s
        if dt > 0:
            for job in self._jobs.values():
                job[0] -= job[2] * dt
        self._last_s = self.env.now

    def _reschedule(self) -> None:
        jobs = list(self._jobs.values())
        for job, rate in zip(jobs, water_fill([j[1] for j in jobs], self.capacity_bytes_per_s)):
            job[2] = rate
        self._version += 1
        wait = min(max(j[0], 0.0) / j[2] for j in jobs)
        version = self._version
        self.env.timeout(wait).callbacks.append(lambda _ev: self._on_wake(version))

    def _on_wake(self, version: int) -> None:
        if version != self._version:
            return  # superseded by a later arrival or completion
        self._advance()
        # a job is done when what is left would take under a nanosecond at its rate, or under
        # the clock's resolution (late in a long run a float clock cannot advance by less, and
        # the wake-up would repeat forever)
        tick_s = max(1e-9, 4 * math.ulp(self.env.now))
        done = [k for k, j in self._jobs.items() if j[0] <= j[2] * tick_s]
        for key in done:
            self._jobs.pop(key)[3].succeed()
        if self._jobs:
            self._reschedule()
