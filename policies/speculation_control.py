"""Speculation control: draft-length schedules that adapt to the observed acceptance and costs.

Three policies of the speculation family (``SpeculationPolicy`` in ``policies.speculation``):

- ``hf-heuristic``: Hugging Face assisted generation's "heuristic" schedule (+2 after a fully
  accepted draft, -1 otherwise);
- ``goodput``: the draft length with the most expected tokens per second (Leviathan et al. 2023);
- ``dynamic``: the source paper's "dynamic acceptance control" (sec. 3.4) made concrete: goodput
  with a margin over plain decoding, an off switch, periodic probing while off, and a confidence
  threshold that tightens as acceptance falls.

The maths (Leviathan et al. 2023, eq. 1 and sec. 3.4), with a = per-token acceptance, k = draft
tokens, v0 = ``verify_s`` (a target pass over the last token alone), d = ``draft_token_s`` and
X(k) = the verify pass's extra cost over k drafts (``verify_extra``):

    E(k)       = 1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a)   tokens per verify pass
    cost(k)    = v0 + k * d + X(k)                                   seconds per step
    rate(k)    = E(k) / cost(k)                                      tokens per second
    speedup(k) = rate(k) / rate(0)

A memory-bound target (a GPU at batch 1) verifies k + 1 positions for about the price of one
(X ~ 0, Leviathan et al.'s model); a compute-bound one does not, and not in line with k either.
SmolLM2-135M on two CPU threads verified 1, 2, 3-4, 5-6, 8-10 rows in 41, 60, 74-80, 66 and
76-82 ms (2026-12-05): a step of 19 ms at the first draft, then almost flat.  A line through the
first draft's cost (X(k) = k * v1, v1 = ``verify_token_s``) made four drafts look 76 ms dearer
where they were 25: at acceptance 0.77 it kept to two drafts (1.26x a plain step's rate) or
stopped, where four made 1.97x.  So X is kept per draft length as measured
(``verify_extra_s``), a line between measured lengths, and beyond the longest measured the
longest's (flat: the optimistic guess, which one step at the new length then checks);
``k * v1`` only while no length is measured.

E(k) is summed term by term, which is finite at a = 1 (E = k + 1) and needs no clamp.
"""

from __future__ import annotations

import math
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


def verify_extra(k: int, measured: tuple[float | None, ...] = (),
                 verify_token_s: float = 0.0) -> float:
    """X(k): the extra seconds of a verify pass over ``k`` drafts beyond a plain pass.
    ``measured[j - 1]`` is X(j) where a step drafted j (None where none did).  Between two
    measured lengths, the line between them (from X(0) = 0 below the shortest); beyond the
    longest, its value (flat); with none measured, ``k * verify_token_s``."""
    if k <= 0:
        return 0.0
    j0, x0 = 0, 0.0
    for j, x in enumerate(measured, start=1):
        if x is None:
            continue
        if k <= j:
            return x0 + (x - x0) * (k - j0) / (j - j0)
        j0, x0 = j, x
    return x0 if j0 else k * verify_token_s


def best_draft_len(
    acceptance: float, draft_token_s: float, verify_s: float, limit: int,
    verify_token_s: float = 0.0, verify_extra_s: tuple[float | None, ...] = (),
) -> tuple[int, float]:
    """The k in [0, limit] with the most expected tokens per second, and its predicted speedup
    over k = 0.  Ties go to the smaller k.  Needs ``verify_s`` > 0 and ``draft_token_s``,
    ``verify_token_s`` >= 0 (a step with k drafts costs verify_s + k * draft_token_s + X(k),
    X from ``verify_extra``)."""
    best_k, best_rate = 0, 1.0 / verify_s
    for k in range(1, limit + 1):
        cost = verify_s + k * draft_token_s + verify_extra(k, verify_extra_s, verify_token_s)
        rate = expected_tokens(acceptance, k) / cost
        if rate > best_rate:  # strictly: a tie keeps the smaller k
            best_k, best_rate = k, rate
    return best_k, best_rate * verify_s


def _costs_known(obs: SpecObservation) -> bool:
    """A plain pass and a drafting step have been measured.  A free draft (prompt lookup) with a
    flat verify pass reports both per-draft costs as 0: its acceptance history says it drafted."""
    return obs.verify_s > 0 and (
        obs.draft_token_s > 0 or obs.verify_token_s > 0 or bool(obs.acceptance_history)
        or any(x is not None for x in obs.verify_extra_s))


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
    second (Leviathan et al. 2023), taking ``obs.acceptance`` as the per-token acceptance and a
    step with k drafts as costing ``verify_s + k * draft_token_s + X(k)`` (``verify_extra``).
    While the costs are still unknown (reported as 0) it proposes ``initial_k`` so the engine
    can measure them.

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
        k, _ = best_draft_len(obs.acceptance, obs.draft_token_s, obs.verify_s, limit,
                              obs.verify_token_s, obs.verify_extra_s)
        return SpecDecision(draft_len=k)


@dataclass(frozen=True, slots=True)
class DynamicSpeculation:
    """The source paper's "dynamic acceptance control" (sec. 3.4), made concrete.

    The paper gives no algorithm and measured 1-12 % acceptance with no useful speedup, so the
    controller's first duty is to notice that and stop drafting, cheaply: when drafting cannot pay
    it should cost well under a few percent against never drafting.  Choices:

    1. Acceptance estimate: the mean of the last ``window`` per-step acceptances while the history
       is shorter than ``window`` (the engine's EWMA starts at 0 and understates a fresh
       acceptance); after that the higher of the EWMA and that recent mean.  Both are noisy
       estimates of one rate, and the costs of error are lopsided: a false "off" forgoes the
       speedup until the next probe, a late "off" wastes a fraction of a step per step.  So
       drafting stops only when both agree there is no gain.  (In the tests' closed-loop stand-in
       for the planner, batch 1, acceptance 0.3-0.8: the EWMA alone made 84-91 % of the best
       fixed k's throughput, this rule 87-97 %.)  Acceptance is not stationary (greedy text falls
       into a loop that prompt lookup predicts perfectly), and after a pause the history is
       stale, so a current run of s fully accepted drafting steps raises the estimate to at least
       (s + 1) / (s + 2) (Laplace's rule of succession over the run).
    2. Costs: a step with k drafts costs ``verify_s + k * draft_token_s + X(k)`` (module
       docstring): the verify pass's growth with k, as measured per draft length, is charged
       to the drafts.
    3. Draft length: the goodput-optimal k (as ``goodput``) for that estimate and those costs, up
       to ``max_k``, and never more than twice the previous step's k (at least ``initial_k``;
       the on/off choice below looks at all k):
       the estimate after a few lucky steps is optimistic, and a long draft costs the most when it
       is wrong, so k grows 1, 2, 4, 8 while acceptance stays good; shrinking is immediate.
       The flat guess for X beyond the longest length measured has a price where the pass does
       grow with its rows: on one thread an int8 copy of SmolLM2, its first guess accepted,
       drafts two tokens once (X(2) measured 57 ms where the guess said 19), then stops.
    4. Off switch: if even that k's predicted speedup over plain decoding is below ``min_gain``,
       k = 0.  Once acceptance drops so far, the engine's acceptance statistics stop moving
       (nothing is drafted), so while off the policy probes with k = 1 every ``probe interval``
       steps; each probe feeds the EWMA and the history, and drafting resumes once they predict a
       gain again; while the steps since the last rejection were all fully accepted, drafting
       continues whenever a fully accepted step would pay (the evidence since then fits a = 1).
       A probe costs at most c = (draft_token_s + X(1)) / verify_s of a
       plain step (its guess rejected), so the interval is the larger of ``probe_every`` and
       c / ``probe_budget``: probing costs at most ``probe_budget`` (1 %) of the plain rate,
       whatever the draft and the target cost (c ~ 0.1 on a GPU: every 64 steps, 0.16 %; c ~ 1.2
       for an int8 copy of SmolLM2 on a CPU: every 120 steps).
    5. Threshold (the draft confidence below which drafting stops early):
       ``MAX_THRESHOLD * (1 - estimate)``, in [0, 0.9]: conservative when acceptance is low,
       permissive when high (about HF's default 0.4 at acceptance 0.55).  Probes, and the
       exploring drafts of choice 6, use 0 (measure, do not guess).
    6. Costs unknown (0), exploration priced like a probe: before anything is measured, a plain
       step (k = 0: exactly what "off" does, it measures ``verify_s``); then ``initial_k`` = 1
       draft, the cheapest step that measures the draft's cost, the verify pass's growth and an
       acceptance.  A bad draft source thus costs a few one-token drafts (choice 7), then
       probes.
    7. A short history stops drafting only when it cannot pay: while fewer than ``window``
       drafting steps are measured, drafting goes on (k at least 1) as long as it would pay at
       the history's mean with one more fully accepted step, (s + 1) / (n + 1) over n steps of
       acceptance sum s.  Without this, one rejected first guess (23 % of runs at acceptance
       0.77) stopped drafting until the next probe, 64 or more steps later.  Exploring stops by
       itself: after n rejected steps the estimate is 1 / (n + 1), so a cheap draft (c small)
       explores longer than a dear one, about one plain step's worth in all.  In a closed loop
       against SmolLM2's measured pass costs (96 steps, 30 seeds; ``tests/sim/engine/
       test_spec_signals.py``), this and the measured X(k) took the controller from 0.57 to
       0.89 of the best fixed k's rate at acceptance 0.77, and from 0.72 to 0.92 at 0.9 (the
       "before" being a line for X and ``explore=False``); a useless free draft source from
       0.992 to 0.985 of plain decoding, a dear one (11 ms a draft token) stays at 0.986 (one
       draft, then probes).  ``explore=False`` turns it off.
    """

    kind: Literal["dynamic"] = "dynamic"
    initial_k: int = 1
    max_k: int = 8
    min_gain: float = 1.05  # predicted speedup over k = 0 needed to keep drafting
    probe_every: int = 64  # least steps without drafting between two probes
    window: int = 16  # recent per-step acceptances looked at
    probe_budget: float = 0.01  # most probing may cost, as a fraction of the plain rate
    explore: bool = True  # a short history stops drafting only when it cannot pay (choice 7)

    def __post_init__(self) -> None:
        _check_non_negative(initial_k=self.initial_k, max_k=self.max_k)
        if self.probe_every < 1 or self.window < 1:
            raise ValueError("probe_every and window must be >= 1")
        if not self.min_gain >= 1.0:
            raise ValueError(f"min_gain must be >= 1, got {self.min_gain}")
        if not self.probe_budget > 0:
            raise ValueError(f"probe_budget must be > 0, got {self.probe_budget}")

    def estimate(self, obs: SpecObservation) -> float:
        """Per-token acceptance the decision is based on, in [0, 1] (choice 1 above)."""
        recent = obs.acceptance_history[-self.window :]
        if not recent:
            a = obs.acceptance
        elif len(recent) < self.window:
            a = sum(recent) / len(recent)
        else:
            a = max(obs.acceptance, sum(recent) / len(recent))
        streak = self.streak(obs)
        if streak:  # rule of succession over the current run of fully accepted steps
            a = max(a, (streak + 1) / (streak + 2))
        return min(max(a, 0.0), 1.0)

    @staticmethod
    def streak(obs: SpecObservation) -> int:
        """Drafting steps, most recent first, whose every guess was accepted (0 unless the last
        step drafted and all its guesses were kept)."""
        n = 0
        if obs.last_draft_len > 0 and obs.last_all_accepted:
            for frac in reversed(obs.acceptance_history):
                if frac < 1.0:
                    break
                n += 1
        return n

    def exploring(self, obs: SpecObservation) -> bool:
        """Fewer than ``window`` drafting steps measured (choice 7 above)."""
        return self.explore and len(obs.acceptance_history) < self.window

    @staticmethod
    def optimistic(obs: SpecObservation) -> float:
        """The mean acceptance of the history with one more fully accepted step (choice 7)."""
        h = obs.acceptance_history
        return (sum(h) + 1.0) / (len(h) + 1)

    def probe_interval(self, obs: SpecObservation) -> int:
        """Steps without drafting before a probe (choice 4 above)."""
        if obs.verify_s <= 0:
            return self.probe_every
        c = (obs.draft_token_s + verify_extra(1, obs.verify_extra_s, obs.verify_token_s)) \
            / obs.verify_s
        if not c < 1e9:  # inf or nan from a degenerate observation
            return 1 << 30
        return max(self.probe_every, math.ceil(c / self.probe_budget))

    def decide(self, obs: SpecObservation) -> SpecDecision:
        limit = max(0, min(self.max_k, obs.max_draft_len))
        a = self.estimate(obs)
        threshold = MAX_THRESHOLD * (1.0 - a)
        if limit == 0:
            return SpecDecision(draft_len=0, threshold=threshold)
        if obs.verify_s <= 0:  # nothing measured: a plain step measures the plain pass
            return SpecDecision(draft_len=0, threshold=threshold)
        if not _costs_known(obs):  # explore: measure, do not cut the draft
            return SpecDecision(draft_len=min(self.initial_k, limit), threshold=0.0)
        costs = (obs.draft_token_s, obs.verify_s)
        extra = (obs.verify_token_s, obs.verify_extra_s)
        k, speedup = best_draft_len(a, *costs, limit, *extra)
        on = k > 0 and speedup >= self.min_gain
        if not on and self.streak(obs):  # evidence since the last rejection fits a = 1
            on = best_draft_len(1.0, *costs, limit, *extra)[1] >= self.min_gain
            k = max(k, 1)
        if not on and self.exploring(obs):  # one more fully accepted step could turn it
            on = best_draft_len(self.optimistic(obs), *costs, limit, *extra)[1] \
                >= self.min_gain
            k = max(k, 1)
        if on:
            cap = max(self.initial_k, 2 * obs.last_draft_len, 1)
            if k > cap:
                k = max(1, best_draft_len(a, *costs, cap, *extra)[0])
            return SpecDecision(draft_len=k, threshold=threshold)
        if obs.steps_since_draft >= self.probe_interval(obs):
            return SpecDecision(draft_len=1, threshold=0.0)
        return SpecDecision(draft_len=0, threshold=threshold)
