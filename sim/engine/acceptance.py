"""Where a decode step's draft acceptance comes from in the engine: drawn with probability
``alpha`` per token, replayed from a recorded trace of 0/1 outcomes, replayed per request from a
measured run (``validate``), or measured by the executor itself (then nothing is drawn here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Acceptance:
    """Contract: ``accepted(batch, k)`` gives, per sequence, how many of ``k`` > 0 drafts are
    accepted: from ``replay`` when given (per request, the accepted count of each measured
    proposal, in order; a request past its record draws with ``alpha``), else from ``trace``
    (cyclic, per draft token), else drawn from ``rng`` with ``alpha``.  The planner skips it for
    a ``measured`` executor, whose result replaces its ``ones(b)``."""

    alpha: float
    rng: np.random.Generator
    trace: np.ndarray | None = None
    replay: dict[int, list[int]] | None = None
    measured: bool = False
    _trace_pos: int = 0
    _replay_pos: dict[int, int] = field(default_factory=dict)
    # per sequence of the last ``accepted`` call, the drafts proposed when a replayed proposal
    # held fewer than k (None: k each)
    last_proposed: np.ndarray | None = None
    _ones: dict[int, np.ndarray] = field(default_factory=dict)

    def ones(self, b: int) -> np.ndarray:
        ones = self._ones.get(b)
        if ones is None:
            ones = self._ones[b] = np.ones(b, dtype=np.int64)
            ones.flags.writeable = False
        return ones

    def accepted(self, batch: np.ndarray, k: int) -> np.ndarray:
        """Per sequence of ``batch``, how many of ``k`` > 0 drafts are accepted."""
        b = len(batch)
        self.last_proposed = None
        if self.replay is not None:
            return self._replayed(batch, k)
        if self.trace is not None:
            idx = (self._trace_pos + np.arange(b * k)) % len(self.trace)
            self._trace_pos = int((self._trace_pos + b * k) % len(self.trace))
            accept = self.trace[idx].reshape(b, k)
        else:
            accept = self.rng.random((b, k)) < self.alpha
        return np.argmin(np.hstack([accept, np.zeros((b, 1), dtype=bool)]), axis=1)

    def _replayed(self, batch: np.ndarray, k: int) -> np.ndarray:
        out = np.empty(len(batch), dtype=np.int64)
        proposed = np.full(len(batch), k, dtype=np.int64)
        for i, rid in enumerate(batch.tolist()):
            counts = self.replay.get(rid, ())
            pos = self._replay_pos.get(rid, 0)
            if pos < len(counts):
                entry = counts[pos]  # accepted, or (proposed, accepted)
                if isinstance(entry, tuple):
                    proposed[i] = min(entry[0], k)
                    entry = entry[1]
                out[i] = min(entry, proposed[i])
                self._replay_pos[rid] = pos + 1
            else:  # more proposals than were measured: draw
                accept = self.rng.random(k) < self.alpha
                out[i] = int(np.argmin(np.append(accept, False)))
        if (proposed < k).any():
            self.last_proposed = proposed
        return out
