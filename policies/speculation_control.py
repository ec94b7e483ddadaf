"""Speculation control: draft-length schedules that adapt to the observed acceptance and costs.

Three policies of the speculation family (``SpeculationPolicy`` in ``policies.speculation``):

- ``hf-heuristic``: Hugging Face assisted generation's "heuristic" schedule (+2 after a fully
  accepted draft, -1 otherwise);
- ``goodput``: the draft length with the most expected tokens per second (Leviathan et al. 2023);
- ``dynamic``: the source paper's "dynamic acceptance control" (sec. 3.4) made concrete: goodput
  with a margin over plain decoding, an off switch, periodic probing while off, and a confidence
  threshold that tightens as acceptance falls.

The maths (Leviathan et al. 2023, eq. 1 and sec. 3.4), with a = per-token acceptance, k = draft
tokens, c = draft-token cost / verify-pass cost:

    E(k)       = 1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a)   tokens per verify pass
    rate(k)    = E(k) / (k * draft_token_s + verify_s)               tokens per second
    speedup(k) = rate(k) / rate(0) = E(k) / (k * c + 1)

E(k) is summed term by term, which is finite at a = 1 (E = k + 1) and needs no clamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from policies.speculation import SpecDecision, SpecObservation

MAX_THRESHOLD = 0.9  # upper end of the dynamic confidence threshold


def expected_tokens(acceptance: float, k: int) -> float:
    """E(k): tokens one verify pass emits with k drafts, each accepted with prob. ``acceptance``
    given all before it were (the accepted prefix plus the target's own token)."""
    a = min(max(acceptance, 0.0), 1.0)
    total, term = 1.0, 1.0
    for _ in range(k):
        term *= a
        total += term
    return total


def best_draft_len(
    acceptance: float, draft_token_s: float, verify_s: float, limit: int
) -> tuple[int, float]:
    """The k in [0, limit] with the most expected tokens per second, and its predicted speedup
    over k = 0.  Ties go to the smaller k.  Needs ``verify_s`` > 0 and ``draft_token_s`` >= 0."""
    best_k, best_rate = 0, 1.0 / verify_s
    for k in range(1, limit + 1):
        rate = expected_tokens(acceptance, k) / (k * draft_token_s + verify_s)
        if rate > best_rate:  # strictly: a tie keeps the smaller k
            best_k, best_rate = k, rate
    return best_k, best_rate * verify_s


def _costs_known(obs: SpecObservation) -> bool:
    return obs.verify_s > 0 and obs.draft_token_s > 0


def _check_non_negative(**params: int) -> None:
    for name, value in params.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class HfHeuristicSpeculation:
    """Hugging Face assisted generation's "heuristic" schedule (``num_assistant_tokens_schedule=
    "heuristic"``): start at ``initial_k``; after a step whose drafts were all accepted propose two
    more, otherwise one fewer, never fewer than one.  Always within [1, obs.max_draft_len]
    (0 only when the engine allows no drafts).  Ignores costs: it never switches itself off."""

    kind: Literal["hf-heuristic"] = "hf-heuristic"
    initial_k: int = 5

    def __post_init__(self) -> None:
        _check_non_negative(initial_k=self.initial_k)

    def decide(self, obs: SpecObservation) -> SpecDecision:
        if obs.max_draft_len <= 0:
            return SpecDecision(draft_len=0)
        last = obs.last_draft_len
        if last == 0:  # first step (this schedule never proposes 0 on its own)
            k = self.initial_k
        elif obs.last_all_accepted:
            k = last + 2
        else:
            k = last - 1
        return SpecDecision(draft_len=min(max(k, 1), obs.max_draft_len))


@dataclass(frozen=True, slots=True)
class GoodputSpeculation:
    """The draft length in [0, min(max_k, obs.max_draft_len)] with the most expected tokens per
    second (Leviathan et al. 2023), taking ``obs.acceptance`` as the per-token acceptance and the
    verify pass as costing ``obs.verify_s`` whatever k is.  While either cost is still unknown
    (reported as 0) it proposes ``initial_k`` so the engine can measure them.

    Contract: with everything else equal, a higher acceptance never gives a shorter draft
    (E(k+1)/E(k) grows with a, so the rate is log-supermodular in (k, a)); acceptance 0 with a
    draft that costs anything gives k = 0."""

    kind: Literal["goodput"] = "goodput"
    max_k: int = 8
    initial_k: int = 4

    def __post_init__(self) -> None:
        _check_non_negative(max_k=self.max_k, initial_k=self.initial_k)

    def decide(self, obs: SpecObservation) -> SpecDecision:
        limit = max(0, min(self.max_k, obs.max_draft_len))
        if not _costs_known(obs):
            return SpecDecision(draft_len=min(self.initial_k, limit))
        k, _ = best_draft_len(obs.acceptance, obs.draft_token_s, obs.verify_s, limit)
        return SpecDecision(draft_len=k)


@dataclass(frozen=True, slots=True)
class DynamicSpeculation:
    """The source paper's "dynamic acceptance control" (sec. 3.4), made concrete.

    The paper gives no algorithm and measured 1-12 % acceptance with no useful speedup, so the
    controller's first duty is to notice that and stop drafting.  Choices:

    1. Acceptance estimate: the mean of the last ``window`` per-step acceptances while the history
       is shorter than ``window`` (the engine's EWMA starts at 0 and understates a fresh
       acceptance); after that the higher of the EWMA and that recent mean.  Both are noisy
       estimates of one rate, and the costs of error are lopsided: a false "off" forgoes the
       speedup for up to ``probe_every`` steps, a late "off" wastes a fraction of a step per
       step.  So drafting stops only when both agree there is no gain.  (In the tests'
       closed-loop stand-in for the planner, batch 1, acceptance 0.3-0.8: the EWMA alone made
       84-91 % of the best fixed k's throughput, this rule 87-97 %.)
    2. Draft length: the goodput-optimal k (as ``goodput``) for that estimate, up to ``max_k``.
    3. Off switch: if even that k's predicted speedup over plain decoding is below ``min_gain``,
       k = 0.  Once acceptance drops so far, the engine's acceptance statistics stop moving
       (nothing is drafted), so while off the policy probes with k = 1 whenever
       ``obs.steps_since_draft`` >= ``probe_every``; each probe feeds the EWMA and the history, and
       drafting resumes once they predict a gain again.  A probe costs one draft token per
       sequence every ``probe_every`` steps (0.16 % of a step at c = 0.1, probe_every = 64).
    4. Threshold (the draft confidence below which drafting stops early):
       ``MAX_THRESHOLD * (1 - estimate)``, in [0, 0.9]: conservative when acceptance is low,
       permissive when high (about HF's default 0.4 at acceptance 0.55).  Probes use 0 so that
       they always measure one token.
    5. Costs unknown (0): propose ``initial_k`` (clamped) to learn them, as ``goodput`` does.
    """

    kind: Literal["dynamic"] = "dynamic"
    initial_k: int = 4
    max_k: int = 8
    min_gain: float = 1.05  # predicted speedup over k = 0 needed to keep drafting
    probe_every: int = 64  # steps without drafting between two probes
    window: int = 16  # recent per-step acceptances looked at

    def __post_init__(self) -> None:
        _check_non_negative(initial_k=self.initial_k, max_k=self.max_k)
        if self.probe_every < 1 or self.window < 1:
            raise ValueError("probe_every and window must be >= 1")
        if not self.min_gain >= 1.0:
            raise ValueError(f"min_gain must be >= 1, got {self.min_gain}")

    def estimate(self, obs: SpecObservation) -> float:
        """Per-token acceptance the decision is based on, in [0, 1] (choice 1 above)."""
        recent = obs.acceptance_history[-self.window :]
        if not recent:
            a = obs.acceptance
        elif len(recent) < self.window:
            a = sum(recent) / len(recent)
        else:
            a = max(obs.acceptance, sum(recent) / len(recent))
        return min(max(a, 0.0), 1.0)

    def decide(self, obs: SpecObservation) -> SpecDecision:
        limit = max(0, min(self.max_k, obs.max_draft_len))
        a = self.estimate(obs)
        threshold = MAX_THRESHOLD * (1.0 - a)
        if limit == 0:
            return SpecDecision(draft_len=0, threshold=threshold)
        if _costs_known(obs):
            k, speedup = best_draft_len(a, obs.draft_token_s, obs.verify_s, limit)
            k = k if speedup >= self.min_gain else 0
        else:
            k = min(self.initial_k, limit)
        if k > 0:
            return SpecDecision(draft_len=k, threshold=threshold)
        if obs.steps_since_draft >= self.probe_every:
            return SpecDecision(draft_len=1, threshold=0.0)
        return SpecDecision(draft_len=0, threshold=threshold)
