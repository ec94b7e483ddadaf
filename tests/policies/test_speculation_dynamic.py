"""The ``dynamic`` speculation policy (the paper's controller): hand-computed decisions (off at low
acceptance, probing while off, the margin, the acceptance estimate, learning the costs, doubling
k, shrinking at once, the probe interval), Hypothesis properties, and a closed-loop run against a
stand-in for the planner's acceptance bookkeeping.  Shared strategies and helpers come from
``speculation_strategies``."""

from __future__ import annotations

import dataclasses
import random
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.speculation import SpecDecision, SpecObservation
from policies.speculation_control import DynamicSpeculation
from tests.policies.speculation_strategies import (
    SETTINGS,
    fracs,
    known_costs,
    obs_of,
    spec_observations,
)

# -- dynamic -------------------------------------------------------------------------------------
LOW, HIGH = (0.05,) * 16, (0.8,) * 16


@pytest.mark.parametrize("last_k", [0, 1, 4])
@pytest.mark.parametrize("history", [(0.05,) * 12, LOW])
def test_dynamic_is_off_at_low_acceptance(last_k, history):
    # a = 0.05, c = 0.1: best is k = 0 (rate(1) = 1.05 / 1.1 < 1); threshold 0.9 * 0.95
    d = DynamicSpeculation().decide(obs_of(0.05, history, last_k, steps_since_draft=63))
    assert d.draft_len == 0
    assert d.threshold == pytest.approx(0.855)


@pytest.mark.parametrize(("history", "expected"), [
    ((), 1), ((0.0,), 1), ((0.0, 0.0), 1),  # c = 0.1: 1 / 3 still pays with one draft
    ((0.0,) * 5, 1),  # 1 / 6: speedup(1) = 1.167 / 1.1 = 1.06
    ((0.0,) * 6, 0),  # 1 / 7: 1.143 / 1.1 = 1.04 < 1.05, and less for longer drafts
    ((0.0,) * 15, 0),
])
def test_dynamic_explores_while_one_more_accepted_step_would_pay(history, expected):
    # a = 0.05 says off (1.05 / 1.1 < 1); with fewer than 16 drafting steps, drafting goes on
    # while the history's mean with one more fully accepted step, (s + 1) / (n + 1), would pay
    # (one rejected first guess at acceptance 0.77 stopped drafting for 64 steps)
    obs = obs_of(0.05, history, last_k=1)
    assert DynamicSpeculation().decide(obs).draft_len == expected
    assert DynamicSpeculation(explore=False).decide(
        obs_of(0.05, (0.05,) * len(history), last_k=1)).draft_len == 0


def test_dynamic_explores_only_a_draft_that_could_pay():
    # c = 1.2: even a = 1 gives (k + 1) / (1 + 1.2 k) < 1, so no evidence is needed to stay off
    obs = obs_of(0.0, (), last_k=1, draft_s=0.6, verify_token_s=0.6)
    assert DynamicSpeculation().decide(obs).draft_len == 0


def test_dynamic_probes_with_one_token_while_off():
    obs = obs_of(0.05, LOW, steps_since_draft=64)
    assert DynamicSpeculation().decide(obs) == SpecDecision(1, 0.0)
    assert DynamicSpeculation(probe_every=100).decide(obs).draft_len == 0


def test_dynamic_stays_on_at_high_acceptance():
    # a = 0.8, c = 0.1: k = 6 as in the goodput table (speedup 2.47); threshold 0.9 * 0.2
    d = DynamicSpeculation().decide(obs_of(0.8, HIGH, last_k=6))
    assert d.draft_len == 6
    assert d.threshold == pytest.approx(0.18)


@pytest.mark.parametrize(
    ("min_gain", "expected"),
    [
        # a = 0.2, c = 0.1: speedup(1) = 1.2 / 1.1 = 1.0909, speedup(2) = 1.24 / 1.2 = 1.0333
        (1.05, 1),
        (1.09, 1),
        (1.1, 0),  # best predicted gain below the margin: off
    ],
)
@pytest.mark.parametrize(("draft_s", "verify_s"), [(0.1, 1.0), (0.5, 5.0)])  # c = 0.1 both
def test_dynamic_margin(min_gain, expected, draft_s, verify_s):
    obs = obs_of(0.2, (0.2,) * 16, last_k=1, draft_s=draft_s, verify_s=verify_s)
    assert DynamicSpeculation(min_gain=min_gain).decide(obs).draft_len == expected


@pytest.mark.parametrize(
    ("acceptance", "history", "estimate"),
    [
        (0.5, (), 0.5),  # no history: the EWMA
        (0.16, (0.8,), 0.8),  # warm-up (EWMA started at 0): the history mean
        (0.05, (0.5,) * 16, 0.5),  # the higher of the EWMA and the recent mean
        (0.5, (0.05,) * 16, 0.5),
        (0.3, (0.0,) * 16 + (0.5,) * 16, 0.5),  # only the last window counts
    ],
)
def test_dynamic_estimate(acceptance, history, estimate):
    assert DynamicSpeculation().estimate(obs_of(acceptance, history)) == pytest.approx(estimate)


def test_dynamic_learns_the_costs_first():
    # nothing measured: a plain step (measures verify_s); then one guess, no threshold
    assert DynamicSpeculation().decide(obs_of(0.0, draft_s=0.0, verify_s=0.0)).draft_len == 0
    assert DynamicSpeculation().decide(obs_of(0.0, draft_s=0.0)) == SpecDecision(1, 0.0)
    assert DynamicSpeculation(initial_k=4).decide(obs_of(0.0, draft_s=0.0, max_k=2)).draft_len == 2
    # a free draft (prompt lookup, flat verify): its history says the costs were measured
    assert DynamicSpeculation().decide(obs_of(1.0, (1.0,), last_k=1, draft_s=0.0)).draft_len == 2


@pytest.mark.parametrize(
    ("verify_token_s", "expected"),
    [
        # a = 0.8, d = 0.1: with a flat verify pass k = 6 (speedup 2.47, as in the goodput table)
        (0.0, 6),
        # v1 = 0.3 (c = 0.4): speedup(1) = 1.8 / 1.4 = 1.286, (2) = 2.44 / 1.8 = 1.356,
        # (3) = 2.952 / 2.2 = 1.342
        (0.3, 2),
        # v1 = 0.9 (c = 1.0): speedup(k) = E(k) / (1 + k) < 1 for every k: off
        (0.9, 0),
    ],
)
def test_dynamic_charges_the_verify_growth_to_the_drafts(verify_token_s, expected):
    obs = obs_of(0.8, HIGH, last_k=8, verify_token_s=verify_token_s)
    assert DynamicSpeculation().decide(obs).draft_len == expected


@pytest.mark.parametrize(("last_k", "expected"), [(0, 1), (1, 2), (2, 4), (3, 6), (6, 6)])
def test_dynamic_grows_k_by_doubling(last_k, expected):
    # a = 0.8, c = 0.1: the best k is 6; k grows at most to twice the last one
    assert DynamicSpeculation().decide(obs_of(0.8, HIGH, last_k=last_k)).draft_len == expected


@pytest.mark.parametrize(
    ("history", "all_accepted", "expected"),
    [
        # c = (0.001 + 0.044) / 0.076 = 0.59 (prompt lookup, SmolLM2 on a CPU); a = 0.5:
        # speedup(1) = 1.5 / 1.59 < 1: off
        ((0.0, 1.0, 0.0, 1.0), False, 0),
        # the same history, the last step fully accepted: the run fits a = 1 (2 / 1.59 = 1.26
        # >= 1.05), estimate max(0.5, 2 / 3): k = 1 (1.667 / 1.59 = 1.05 is its best)
        ((0.0, 1.0, 0.0, 1.0), True, 1),
        # a run of 4: estimate 5 / 6, speedup(1) = 1.151, (2) = 1.157, (3) = 1.119: k = 2
        ((0.0, 1.0, 1.0, 1.0, 1.0), True, 2),
    ],
)
def test_dynamic_keeps_drafting_while_every_guess_is_accepted(history, all_accepted, expected):
    obs = obs_of(0.0, history, last_k=1, all_accepted=all_accepted, draft_s=0.001,
                 verify_s=0.076, verify_token_s=0.044)
    assert DynamicSpeculation().decide(obs).draft_len == expected


def test_dynamic_streak_never_revives_a_draft_that_cannot_pay():
    # c = 1.2 (an int8 copy on a CPU): even a = 1 gives (k + 1) / (1 + 1.2 k) < 1
    obs = obs_of(0.0, (1.0,) * 8, last_k=1, all_accepted=True, draft_s=0.6, verify_token_s=0.6)
    assert DynamicSpeculation().decide(obs).draft_len == 0


def test_dynamic_shrinks_at_once():
    assert DynamicSpeculation().decide(obs_of(0.2, (0.2,) * 16, last_k=8)).draft_len == 1


@pytest.mark.parametrize(
    ("draft_s", "verify_token_s", "interval"),
    [
        (0.1, 0.0, 64),  # c = 0.1: 0.1 / 0.01 = 10 steps < probe_every
        (0.6, 0.6, 120),  # c = 1.2 (an int8 copy of SmolLM2 on a CPU): 120 steps, 1 % overhead
        (1.0, 0.0, 100),  # a draft token costing a plain step: every 100 steps
    ],
)
def test_dynamic_probe_interval_bounds_the_probing_cost(draft_s, verify_token_s, interval):
    policy = DynamicSpeculation()
    obs = obs_of(0.0, LOW, draft_s=draft_s, verify_token_s=verify_token_s)
    assert policy.probe_interval(obs) == interval
    assert policy.decide(dataclasses.replace(obs, steps_since_draft=interval - 1)).draft_len == 0
    assert policy.decide(dataclasses.replace(obs, steps_since_draft=interval)) == SpecDecision(
        1, 0.0)


@SETTINGS
@given(
    obs=spec_observations(
        acceptance=st.floats(0.0, 0.04), draft_s=known_costs, verify_s=known_costs
    ),
    history=st.lists(st.floats(0.0, 0.04), min_size=16),
)
def test_dynamic_is_off_when_no_draft_length_can_pay(obs, history):
    # a < 1 - 1 / 1.05 = 0.0476 bounds every E(k) by 1 / (1 - a) < 1.05: no k reaches min_gain
    obs = dataclasses.replace(obs, acceptance_history=tuple(history))
    policy = DynamicSpeculation()
    d = policy.decide(obs)
    probe = obs.steps_since_draft >= policy.probe_interval(obs) and obs.max_draft_len
    assert d.draft_len == (1 if probe else 0)


@SETTINGS
@given(obs=spec_observations(acceptance=st.floats(0.0, 0.99), verify_s=known_costs))
def test_dynamic_is_off_when_a_draft_token_costs_a_verify_pass(obs):
    obs = dataclasses.replace(
        obs, acceptance_history=(), draft_token_s=obs.verify_s, steps_since_draft=0
    )
    assert DynamicSpeculation().decide(obs).draft_len == 0


@SETTINGS
@given(obs=spec_observations(), other=fracs)
def test_dynamic_threshold_falls_as_acceptance_rises(obs, other):
    low, high = sorted((obs.acceptance, other))
    policy = DynamicSpeculation()
    on = dataclasses.replace(obs, acceptance_history=(), steps_since_draft=0)
    t_low = policy.decide(dataclasses.replace(on, acceptance=low)).threshold
    t_high = policy.decide(dataclasses.replace(on, acceptance=high)).threshold
    assert 0.0 <= t_high <= t_low <= 0.9


# -- dynamic in a closed loop ----------------------------------------------------------------------
def run_loop(policy, alpha_at, draft_s: float = 0.1, steps: int = 3000, seed: int = 0):
    """Tokens per unit time and the fraction of steps that drafted, for batch 1 and a verify pass
    costing 1.  The acceptance bookkeeping mirrors sim/engine/planner.py: an EWMA (weight 0.2,
    starting at 0) and a 32-long history of per-step accepted / proposed, both updated only by
    steps that draft; each draft token is accepted with probability alpha if all before it were."""
    rng = random.Random(seed)
    ewma, history = 0.0, deque(maxlen=32)
    last_k, all_accepted, since = 0, False, 0
    tokens = elapsed = 0.0
    drafted = 0
    for step in range(steps):
        obs = SpecObservation(
            ewma, tuple(history), last_k, all_accepted, draft_s, 1.0, 8, steps_since_draft=since
        )
        k = policy.decide(obs).draft_len
        last_k, since = k, (0 if k else since + 1)
        accepted = 0
        while accepted < k and rng.random() < alpha_at(step):
            accepted += 1
        if k:
            drafted += 1
            ewma = 0.8 * ewma + 0.2 * accepted / k
            history.append(accepted / k)
            all_accepted = accepted == k
        tokens += 1 + accepted
        elapsed += 1.0 + k * draft_s
    return tokens / elapsed, drafted / steps


@pytest.mark.parametrize("seed", [0, 1])
def test_dynamic_closed_loop_low_acceptance_is_nearly_off(seed):
    rate, drafted = run_loop(DynamicSpeculation(), lambda _: 0.05, seed=seed)
    assert drafted < 0.04  # probes (1 in 65 steps) and little else
    assert rate > 0.99  # "off" makes 1 token per unit time


@pytest.mark.parametrize("seed", [0, 1])
def test_dynamic_closed_loop_high_acceptance_stays_on(seed):
    rate, drafted = run_loop(DynamicSpeculation(), lambda _: 0.8, seed=seed)
    assert drafted > 0.95
    assert rate > 2.0  # the best fixed k makes about 2.47


def test_dynamic_closed_loop_notices_recovery():
    def alpha_at(step):
        return 0.05 if step < 1500 else 0.8

    rate_before, drafted_before = run_loop(DynamicSpeculation(), alpha_at, steps=1500)
    rate_all, drafted_all = run_loop(DynamicSpeculation(), alpha_at, steps=3000)
    assert drafted_before < 0.04
    # the last 1500 steps draft in nearly all of them: within a few probes of the change
    assert (drafted_all * 3000 - drafted_before * 1500) / 1500 > 0.85
