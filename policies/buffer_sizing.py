"""Buffer sizing: step-buffer policies that size from the observed requests and reuse freed
buffers, so a step rarely allocates (the source paper's "enhanced IOBinding", sec. 3.3 and A.2).

Both policies reuse only what the engine can reuse: the buffer held now when it is at least the
requested size, or (``adaptive`` only) a freed buffer in the pool that is.  Requests are positive
byte counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from policies.buffers import BufferDecision, BufferObservation


def _reuse_current(obs: BufferObservation) -> BufferDecision | None:
    if obs.current_bytes >= obs.requested_bytes:
        return BufferDecision(alloc_bytes=obs.current_bytes, reuse=True)
    return None


@dataclass(frozen=True, slots=True)
class AdaptiveBuffers:
    """The paper's adaptive buffer sizing with memory-pool reuse.

    1. The buffer held now fits: keep it.
    2. A freed buffer in the pool fits: take it (the engine takes the smallest that fits).
    3. Otherwise allocate ``growth`` times the larger of the request and the largest of the last
       ``window`` requests, capped at ``max_bytes`` but never below the request.  A buffer that
       keeps outgrowing itself therefore grows geometrically (x ``growth`` per allocation), so a
       request that climbs to size S costs O(log S) allocations instead of one per step, and a
       buffer sized from the recent peak survives the step-to-step swing of batch sizes.

    Contract: ``reuse`` only when the current buffer or a pool buffer is >= the request;
    otherwise ``requested_bytes`` <= ``alloc_bytes`` <= max(``max_bytes``, request)."""

    kind: Literal["adaptive"] = "adaptive"
    growth: float = 1.5  # headroom factor per allocation (geometric growth)
    max_bytes: int = 2**30  # cap on the headroom, not on the request
    window: int = 16  # most recent requests of the history looked at

    def __post_init__(self) -> None:
        if not self.growth >= 1.0:
            raise ValueError(f"growth must be >= 1, got {self.growth}")
        if self.max_bytes < 0 or self.window < 0:
            raise ValueError("max_bytes and window must be >= 0")

    def decide(self, obs: BufferObservation) -> BufferDecision:
        current = _reuse_current(obs)
        if current is not None:
            return current
        fits = [b for b in obs.pool_free_bytes if b >= obs.requested_bytes]
        if fits:
            return BufferDecision(alloc_bytes=min(fits), reuse=True)
        recent = obs.history_bytes[-self.window :] if self.window else ()
        peak = max((obs.requested_bytes, *recent))
        target = min(math.ceil(peak * self.growth), self.max_bytes)
        return BufferDecision(alloc_bytes=max(obs.requested_bytes, target))


@dataclass(frozen=True, slots=True)
class Pow2Buffers:
    """Keep the buffer held now when it fits; otherwise allocate the next power of two at least
    the request (a size-class allocator: at most 2x the request reserved, and a slowly growing
    request reallocates only when it crosses a power of two).  Never takes from the pool."""

    kind: Literal["pow2"] = "pow2"

    def decide(self, obs: BufferObservation) -> BufferDecision:
        current = _reuse_current(obs)
        if current is not None:
            return current
        return BufferDecision(alloc_bytes=next_pow2(obs.requested_bytes))


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()
