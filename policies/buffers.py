"""Buffers family: how big to allocate step buffers and whether to reuse them from a pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class BufferObservation:
    """One buffer request of one step (e.g. the logits or hidden-state buffer)."""

    name: str  # which buffer: "logits", "hidden", ...
    requested_bytes: int
    current_bytes: int  # capacity of the buffer held now, 0 if none
    history_bytes: tuple[int, ...] = ()  # recent requested sizes, oldest first
    pool_free_bytes: tuple[int, ...] = ()  # sizes of freed buffers waiting in the pool


@dataclass(frozen=True, slots=True)
class BufferDecision:
    """``alloc_bytes`` >= requested when a new buffer is allocated; ``reuse`` keeps the current
    buffer (only feasible when ``current_bytes`` >= requested) or takes one from the pool."""

    alloc_bytes: int
    reuse: bool = False


class BufferPolicy(Protocol):
    kind: str

    def decide(self, obs: BufferObservation) -> BufferDecision: ...


@dataclass(frozen=True, slots=True)
class ExactBuffers:
    """Baseline: allocate a buffer of exactly the requested size at every step, never reuse."""

    kind: Literal["exact"] = "exact"

    def decide(self, obs: BufferObservation) -> BufferDecision:
        return BufferDecision(alloc_bytes=obs.requested_bytes, reuse=False)


@dataclass(frozen=True, slots=True)
class PreallocatedBuffers:
    """One buffer of ``max_bytes`` allocated up front and reused every step; a larger request
    allocates once more at that size."""

    kind: Literal["preallocate"] = "preallocate"
    max_bytes: int = 64 * 2**20

    def decide(self, obs: BufferObservation) -> BufferDecision:
        if obs.current_bytes >= obs.requested_bytes:
            return BufferDecision(alloc_bytes=obs.current_bytes, reuse=True)
        return BufferDecision(alloc_bytes=max(self.max_bytes, obs.requested_bytes))
