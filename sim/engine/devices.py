"""The engine's device locks: one FIFO lock per device.  A device can fail: nobody takes its lock
while it is down, and whoever holds or waits for it finds it down and lets go (``Held.usable``)."""

from __future__ import annotations

from collections import deque

import simpy


class DeviceLock:
    """A FIFO lock on one device: cheaper than a ``simpy.Resource`` because taking a free device
    costs no event.  ``wait()`` returns an event fired when the lock is handed over."""

    def __init__(self, env: simpy.Environment):
        self.env, self.busy = env, False
        self.down = False  # the device failed: ``acquire`` skips its lock
        self.waiters: deque[simpy.Event] = deque()

    def wait(self) -> simpy.Event:
        ev = self.env.event()
        self.waiters.append(ev)
        return ev

    def release(self) -> None:
        if self.waiters:
            self.waiters.popleft().succeed()  # handed over: stays busy
        else:
            self.busy = False


class Held(list):
    """The locks a process took, and whether it got every one it asked for."""

    complete: bool = True

    @property
    def usable(self) -> bool:
        """Every device asked for is held and up: the step may run."""
        if not self.complete:
            return False
        for lock in self:
            if lock.down:
                return False
        return True


def acquire(locks: list[DeviceLock]):
    """Take every lock (sorted by the caller), waiting in FIFO order for busy ones; a down
    device's lock is skipped.  Returns the locks taken (``Held``).  Only the decode process
    ever holds more than one device, so no two processes can deadlock."""
    taken = Held()
    for lock in locks:
        if lock.down:
            taken.complete = False
            continue
        if lock.busy:
            yield lock.wait()
        else:
            lock.busy = True
        taken.append(lock)
    return taken


def release(locks: list[DeviceLock]) -> None:
    for lock in locks:
        lock.release()
