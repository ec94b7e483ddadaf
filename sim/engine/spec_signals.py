"""What the speculation policy observes, kept from step outcomes: the acceptance EWMA and history,
and the step-cost EWMAs.  The planner keeps one; a real decoding loop can keep the same."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from policies import SpecObservation

EWMA_WEIGHT = 0.2  # weight of the newest sample in every EWMA kept here
HISTORY_LEN = 32  # per-step acceptances kept for the policy


def ewma(old: float, new: float, known: bool | None = None) -> float:
    """The EWMA of the statistics, the first sample taken as is; ``known`` says whether ``old``
    holds a sample (default: ``old`` != 0, for quantities that are never 0 once measured)."""
    if not (old != 0 if known is None else known):
        return new
    return (1 - EWMA_WEIGHT) * old + EWMA_WEIGHT * new


@dataclass(slots=True)
class SpecSignals:
    """Contract: ``record_acceptance`` and ``record_costs`` are the only writers; ``observation``
    reads.  Seconds.  ``acceptance`` is per token: accepted / (accepted + rejections), the
    estimate of alpha for a geometric run cut at k (accepted / proposed would understate it)."""

    acceptance: float = 0.0
    history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_LEN))
    last_k: int = 0
    last_all_accepted: bool = False
    steps_since_draft: int = 0
    draft_token_s: float = 0.0  # EWMA of draft seconds per draft token
    verify_s: float = 0.0  # EWMA of every decode step's verify seconds
    plain_verify_s: float = 0.0  # EWMA of the verify seconds of steps that verified no draft
    verify_token_s: float = 0.0  # EWMA of a drafting step's extra verify seconds per token
    verify_token_known: bool = False  # verify_token_s can be 0 once measured (flat verify)
    num_proposed: int = 0  # accepted + rejected draft tokens, the run's total
    num_accepted: int = 0

    def observation(self, max_draft_len: int, batch_size: int) -> SpecObservation:
        # the plain-step verify time once measured, every step's before
        verify_s = self.plain_verify_s if self.plain_verify_s > 0 else self.verify_s
        return SpecObservation(self.acceptance, tuple(self.history), self.last_k,
                               self.last_all_accepted, self.draft_token_s, verify_s,
                               max_draft_len, batch_size, self.steps_since_draft,
                               self.verify_token_s)

    def decided(self, k: int) -> None:
        """The policy's draft length for the step about to run."""
        self.last_k = k
        self.steps_since_draft = 0 if k else self.steps_since_draft + 1

    def record_acceptance(self, proposed: np.ndarray, accepted: np.ndarray) -> None:
        """One step's outcome per sequence: ``proposed`` draft tokens, of which the first
        ``accepted`` were kept.  A step that proposed nothing (prompt lookup found no match) says
        nothing about acceptance."""
        if not int(np.sum(proposed)):
            return
        num_accepted = int(accepted.sum())
        num_rejected = int((accepted < proposed).sum())
        self.num_proposed += num_accepted + num_rejected
        self.num_accepted += num_accepted
        frac = num_accepted / (num_accepted + num_rejected) if num_accepted + num_rejected else 1.0
        self.acceptance = frac if not self.history else (
            (1 - EWMA_WEIGHT) * self.acceptance + EWMA_WEIGHT * frac)
        self.history.append(frac)
        self.last_all_accepted = bool(num_rejected == 0)

    def record_costs(self, draft_s: float, verify_s: float, k: float) -> None:
        """One decode step's cost: ``draft_s`` drafting, ``verify_s`` the rest, ``k`` draft tokens
        per sequence (the measured mean where an executor reports it).  ``verify_token_s`` stays 0
        until a plain step has been measured; a negative sample (noise) counts as 0."""
        self.verify_s = ewma(self.verify_s, verify_s)
        if k == 0:
            self.plain_verify_s = ewma(self.plain_verify_s, verify_s)
            return
        self.draft_token_s = ewma(self.draft_token_s, draft_s / k)
        if self.plain_verify_s > 0:
            extra = max(verify_s - self.plain_verify_s, 0.0) / k
            self.verify_token_s = ewma(self.verify_token_s, extra, self.verify_token_known)
            self.verify_token_known = True
