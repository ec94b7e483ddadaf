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
    # draft length -> EWMA of a verify pass's extra seconds over a plain one, at that length
    verify_extra: dict[int, float] = field(default_factory=dict)
    num_proposed: int = 0  # accepted + rejected draft tokens, the run's total
    num_accepted: int = 0

    def observation(self, max_draft_len: int, batch_size: int) -> SpecObservation:
        # the plain-step verify time once measured, every step's before
        verify_s = self.plain_verify_s if self.plain_verify_s > 0 else self.verify_s
        return SpecObservation(self.acceptance, tuple(self.history), self.last_k,
                               self.last_all_accepted, self.draft_token_s, verify_s,
                               max_draft_len, batch_size, self.steps_since_draft,
                               self.verify_token_s, tuple(
                                   self.verify_extra.get(k)
                                   for k in range(1, max(self.verify_extra, default=0) + 1)))

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

    def record_costs(self, draft_s: float, verify_s: float, k: float,
                     drafted: int | None = None) -> None:
        """One decode step's cost: ``draft_s`` drafting, ``verify_s`` the rest, ``k`` draft tokens
        per sequence (the measured mean where an executor reports it), ``drafted`` the draft
        length its verify pass checked (default ``k``; a pass is as long as the step's draft
        length whatever was proposed: prompt lookup pads a row that found no match).  The extra
        verify time goes per draft length into ``verify_extra`` and, per position checked, into
        ``verify_token_s`` (per proposed token, a step where one row of two found no match read
        twice its cost).  Both stay empty / 0 until a plain step has been measured; a negative
        sample (noise) counts as 0."""
        n = k if drafted is None else drafted
        self.verify_s = ewma(self.verify_s, verify_s)
        if n == 0:
            self.plain_verify_s = ewma(self.plain_verify_s, verify_s)
            return
        if k > 0:  # (no row found a draft: a padded pass, no draft cost per token to learn)
            self.draft_token_s = ewma(self.draft_token_s, draft_s / k)
        if self.plain_verify_s > 0:
            extra = max(verify_s - self.plain_verify_s, 0.0)
            self.verify_token_s = ewma(self.verify_token_s, extra / n, self.verify_token_known)
            self.verify_token_known = True
            if n == int(n):
                n = int(n)
                self.verify_extra[n] = ewma(self.verify_extra.get(n, 0.0), extra,
                                            n in self.verify_extra)
