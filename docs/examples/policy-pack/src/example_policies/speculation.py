"""``backoff``: additive-increase / multiplicative-decrease (AIMD) on the draft length, capped
where one more draft token no longer pays for itself.

A pure function of the observation: the engine keeps the history (the previous step's draft
length and whether every draft token was accepted, the acceptance EWMA, the step costs); the
policy keeps no state.  With a = ``obs.acceptance`` (per-token acceptance) and
c = (``draft_token_s`` + ``verify_token_s``) / ``verify_s`` (what one draft token adds to a step,
as a fraction of a plain step):

1. After a drafting step whose every draft token was accepted, k grows by ``increase``; after one
   with a rejection it is multiplied by ``backoff`` (rounded down, at least 1).
2. The j-th draft token is looked at only if the j - 1 before it were accepted, so it yields a^j
   tokens on average for a cost of c: k is capped at the largest j with a^j > c.  When a <= c no
   draft length beats plain decoding, the cap is 0 and drafting stops.  Costs not yet measured
   (reported as 0) give no cap.
3. While stopped, a one-token probe every ``probe_every`` steps keeps the acceptance estimate
   fresh; drafting resumes (at k = 1) as soon as the cap allows it again.
4. Start: a plain step first (k = 0, which measures ``verify_s``), then a one-token probe (which
   measures the draft's cost, the verify pass's growth and a first acceptance).

Compared with the built-ins: ``hf-heuristic`` moves k by +2/-1 and ignores costs; ``goodput`` and
``dynamic`` jump to the goodput-optimal k.  This one moves k cautiously (one token at a time up,
halving down) inside the bound the costs allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from policies import SpecDecision, SpecObservation


def paying_draft_len(acceptance: float, cost_ratio: float, limit: int) -> int:
    """The largest j in [0, limit] with acceptance^j > cost_ratio: the longest draft whose last
    token still pays for itself on average.  ``limit`` for a free draft (cost_ratio <= 0)."""
    if not cost_ratio > 0:
        return limit
    a = min(max(acceptance, 0.0), 1.0)
    j, gain = 0, 1.0
    while j < limit:
        gain *= a
        if gain <= cost_ratio:
            break
        j += 1
    return j


@dataclass(frozen=True, slots=True)
class BackoffSpeculation:
    """AIMD draft length (module docstring).  Never more than ``obs.max_draft_len`` draft tokens;
    with everything else equal a higher acceptance never gives a shorter draft."""

    kind: Literal["backoff"] = "backoff"
    family: ClassVar[str] = "speculation"
    increase: int = 1  # draft tokens added after a step whose drafts were all accepted (>= 1)
    backoff: float = 0.5  # factor on k after a step with a rejected draft token, in (0, 1)
    probe_every: int = 16  # decode steps without drafting before a one-token probe (>= 1)

    def __post_init__(self) -> None:
        if self.increase < 1:
            raise ValueError(f"increase must be >= 1, got {self.increase}")
        if not 0.0 < self.backoff < 1.0:
            raise ValueError(f"backoff must be in (0, 1), got {self.backoff}")
        if self.probe_every < 1:
            raise ValueError(f"probe_every must be >= 1, got {self.probe_every}")

    def cap(self, obs: SpecObservation) -> int:
        """The most draft tokens that pay at the observed acceptance and costs (rule 2)."""
        limit = max(0, obs.max_draft_len)
        if not obs.verify_s > 0:
            return limit  # nothing measured yet: no cost ratio to go by
        ratio = (obs.draft_token_s + obs.verify_token_s) / obs.verify_s
        return paying_draft_len(obs.acceptance, ratio, limit)

    def decide(self, obs: SpecObservation) -> SpecDecision:
        if obs.max_draft_len <= 0:
            return SpecDecision(draft_len=0)
        if not obs.verify_s > 0:  # nothing measured yet: a plain step measures the plain pass
            return SpecDecision(draft_len=0)
        cap = self.cap(obs)
        last = obs.last_draft_len
        if last <= 0:  # not drafting: resume, start or probe (rule 3)
            probe = not obs.acceptance_history or obs.steps_since_draft >= self.probe_every
            return SpecDecision(draft_len=1 if cap > 0 or probe else 0)
        if obs.last_all_accepted:
            k = last + self.increase
        else:
            k = max(1, int(last * self.backoff))
        return SpecDecision(draft_len=min(k, cap, obs.max_draft_len))
