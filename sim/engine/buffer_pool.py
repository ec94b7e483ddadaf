"""Step buffers as the engine manages them: a held buffer per name, a pool of freed ones, and the
counters the buffer policies are judged by (allocations, bytes, reserved vs used)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from policies import BufferDecision, BufferObservation, BufferPolicy
from sim.engine.policy_call import ask
from sim.errors import InfeasibleDecision

HISTORY_LEN = 16
POOL_LEN = 8


@dataclass(slots=True)
class BufferStats:
    num_allocs: int = 0
    alloc_bytes: int = 0
    num_reuses: int = 0
    copy_bytes: int = 0  # contents moved into a reallocated buffer
    used_bytes_sum: int = 0  # requested bytes, summed over steps
    reserved_bytes_sum: int = 0  # bytes held for those requests, summed over steps

    @property
    def efficiency_frac(self) -> float:
        return self.used_bytes_sum / self.reserved_bytes_sum if self.reserved_bytes_sum else 1.0


class BufferPool:
    """Contract: after ``request`` the buffer held under ``name`` is at least the requested size;
    an infeasible decision (too small, or a reuse with nothing big enough) raises."""

    def __init__(self, policy: BufferPolicy):
        self.policy = policy
        self.held: dict[str, int] = {}
        self.history: dict[str, deque[int]] = {}
        self.pool: list[int] = []
        self.stats = BufferStats()

    def request(self, name: str, requested: int, preserve_bytes: int = 0) -> tuple[int, int, int]:
        """Returns (allocations made, bytes allocated, bytes copied) for this request.
        ``preserve_bytes``: the buffer's live contents, copied when it moves to a new buffer."""
        history = self.history.get(name)
        if history is None:
            history = self.history[name] = deque(maxlen=HISTORY_LEN)
        held = self.held
        current = held.get(name, 0)
        obs = BufferObservation(name, requested, current, tuple(history), tuple(self.pool))
        decision: BufferDecision = ask(self.policy, "buffers", obs)
        history.append(requested)
        held_before = held.get(name)
        allocs, alloc_bytes = self._apply(name, requested, current, decision)
        moved = allocs > 0 or held.get(name) != held_before
        copied = min(preserve_bytes, current) if moved and current else 0
        stats = self.stats
        stats.copy_bytes += copied
        stats.used_bytes_sum += requested
        stats.reserved_bytes_sum += held[name]
        return allocs, alloc_bytes, copied

    def _apply(self, name: str, requested: int, current: int,
               d: BufferDecision) -> tuple[int, int]:
        if d.reuse:
            if current >= requested:
                self.stats.num_reuses += 1
                return 0, 0
            fits = [b for b in self.pool if b >= requested]
            if not fits:
                raise InfeasibleDecision(f"buffer policy {self.policy.kind!r}: reuse of {name!r} "
                                         f"({requested} bytes) with nothing big enough")
            self.pool.remove(min(fits))
            self._release(current)
            self.held[name] = min(fits)
            self.stats.num_reuses += 1
            return 0, 0
        if d.alloc_bytes < requested:
            raise InfeasibleDecision(f"buffer policy {self.policy.kind!r}: allocates "
                                     f"{d.alloc_bytes} bytes for {name!r} needing {requested}")
        self._release(current)
        self.held[name] = d.alloc_bytes
        self.stats.num_allocs += 1
        self.stats.alloc_bytes += d.alloc_bytes
        return 1, d.alloc_bytes

    def release(self, name: str) -> None:
        """The buffer held under ``name`` is no longer needed: it goes to the pool."""
        self._release(self.held.pop(name, 0))
        self.history.pop(name, None)

    def _release(self, size: int) -> None:
        if size:
            self.pool.append(size)
            del self.pool[:-POOL_LEN]
