"""Speculation policies: hand-computed draft lengths (HF heuristic schedule, Leviathan goodput,
dynamic on/off with probing), Hypothesis properties every speculation policy must keep
(feasible k, threshold in range, determinism, monotonicity of goodput in acceptance), and a
closed-loop run of ``dynamic`` against a stand-in for the planner's acceptance bookkeeping.

Goodput tables are computed by hand in the comments: E(k) = 1 + a + ... + a^k tokens a verify
pass, rate(k) = E(k) / (k * (draft_token_s + verify_token_s) + verify_s)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.speculation import FixedSpeculation, NoSpeculation, SpecDecision
from policies.speculation_control import (
    DynamicSpeculation,
    GoodputSpeculation,
    HfHeuristicSpeculation,
    verify_extra,
)
from tests.policies.speculation_strategies import (
    SETTINGS,
    fracs,
    known_costs,
    obs_of,
    spec_observations,
)

POLICIES = (
    NoSpeculation(),
    FixedSpeculation(),
    FixedSpeculation(k=20),
    HfHeuristicSpeculation(),
    HfHeuristicSpeculation(initial_k=1),
    GoodputSpeculation(),
    GoodputSpeculation(max_k=16, initial_k=0),
    DynamicSpeculation(),
    DynamicSpeculation(initial_k=0, max_k=12, min_gain=1.0, probe_every=1, window=1),
)
NEW_CLASSES = (HfHeuristicSpeculation, GoodputSpeculation, DynamicSpeculation)


# -- every policy ----------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: repr(p))
@SETTINGS
@given(obs=spec_observations())
def test_decision_is_feasible(policy, obs):
    d = policy.decide(obs)
    assert isinstance(d, SpecDecision)
    assert isinstance(d.draft_len, int) and 0 <= d.draft_len <= obs.max_draft_len
    assert 0.0 <= d.threshold <= 0.9


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: repr(p))
@SETTINGS
@given(obs=spec_observations())
def test_decision_is_deterministic(policy, obs):
    twin = dataclasses.replace(policy)  # an equal, separate instance
    copy = dataclasses.replace(obs, acceptance_history=tuple(list(obs.acceptance_history)))
    assert policy.decide(obs) == policy.decide(obs) == twin.decide(copy)


@pytest.mark.parametrize("cls", NEW_CLASSES)
def test_policy_is_a_frozen_slotted_dataclass_with_a_kind(cls):
    policy = cls()
    assert not hasattr(policy, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.kind = "other"
    hints = typing.get_type_hints(cls)
    assert typing.get_args(hints["kind"]) == (policy.kind,)


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (HfHeuristicSpeculation, {"initial_k": -1}),
        (GoodputSpeculation, {"max_k": -1}),
        (DynamicSpeculation, {"min_gain": 0.9}),
        (DynamicSpeculation, {"probe_every": 0}),
        (DynamicSpeculation, {"window": 0}),
    ],
)
def test_bad_parameters_are_refused(cls, params):
    with pytest.raises(ValueError):
        cls(**params)


# -- hf-heuristic ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("last_k", "all_accepted", "max_k", "expected"),
    [
        (0, False, 8, 5),  # first step: initial_k
        (0, True, 8, 5),
        (0, False, 3, 3),  # initial_k clamped to the engine's limit
        (5, True, 8, 7),  # +2 after a fully accepted draft
        (7, True, 8, 8),  # 9, clamped
        (3, True, 4, 4),  # 5, clamped
        (5, False, 8, 4),  # -1 otherwise
        (2, False, 8, 1),
        (1, False, 8, 1),  # never below 1
        (6, False, 4, 4),  # 5, clamped
        (1, True, 8, 3),
        (4, True, 0, 0),  # the engine allows no drafts
        (0, False, 0, 0),
    ],
)
def test_hf_heuristic_schedule(last_k, all_accepted, max_k, expected):
    obs = obs_of(last_k=last_k, all_accepted=all_accepted, max_k=max_k)
    assert HfHeuristicSpeculation().decide(obs) == SpecDecision(expected)


def test_hf_heuristic_initial_k_is_a_parameter():
    assert HfHeuristicSpeculation(initial_k=2).decide(obs_of()).draft_len == 2


@SETTINGS
@given(obs=spec_observations())
def test_hf_heuristic_never_switches_off_and_moves_by_its_steps(obs):
    k = HfHeuristicSpeculation().decide(obs).draft_len
    if obs.max_draft_len == 0:
        assert k == 0
        return
    assert k >= 1
    last = obs.last_draft_len
    if last and obs.last_all_accepted:
        assert min(last, obs.max_draft_len) <= k <= last + 2  # grows, unless clamped
    elif last:
        assert k <= max(last - 1, 1)


# -- goodput -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("acceptance", "draft_s", "verify_s", "max_k", "expected"),
    [
        # a = 0.8, c = 0.1: E = 1, 1.8, 2.44, 2.952, 3.3616, 3.68928, 3.951424, 4.1611392, ...
        # rate = 1, 1.636, 2.033, 2.271, 2.401, 2.4595, 2.4696, 2.4477  -> k = 6
        (0.8, 0.1, 1.0, 8, 6),
        (0.8, 0.1, 1.0, 4, 4),  # the rate still climbs at the engine's limit
        # a = 0.3, c = 0.1: E = 1, 1.3, 1.39, 1.417; rate = 1, 1.1818, 1.1583, 1.09 -> k = 1
        (0.3, 0.1, 1.0, 8, 1),
        # a = 0.6, verify 2, draft 0.5: E = 1, 1.6, 1.96, 2.176; cost = 2, 2.5, 3, 3.5
        # rate = 0.5, 0.64, 0.6533, 0.6217 -> k = 2
        (0.6, 0.5, 2.0, 8, 2),
        # a = 0.5, c = 0.5: E = 1, 1.5, 1.75; rate = 1, 1.5 / 1.5 = 1, 0.875 -> tie, k = 0
        (0.5, 0.5, 1.0, 8, 0),
        # a = 1: rate = (k + 1) / (1 + 0.1 k) grows with k: 9 / 1.8 = 5 at k = 8 -> k = max_k
        (1.0, 0.1, 1.0, 16, 8),
        # a = 0.05, c = 0.1: rate(1) = 1.05 / 1.1 = 0.955 < 1 -> k = 0
        (0.05, 0.1, 1.0, 8, 0),
        (0.0, 0.001, 1.0, 8, 0),  # nothing accepted: any draft cost loses
        (0.9, 0.0, 1.0, 8, 4),  # draft cost not yet measured: initial_k
        (0.9, 0.1, 0.0, 8, 4),  # verify cost not yet measured: initial_k
        (0.9, 0.1, 0.0, 2, 2),  # initial_k clamped
    ],
)
def test_goodput_hand_computed(acceptance, draft_s, verify_s, max_k, expected):
    obs = obs_of(acceptance, draft_s=draft_s, verify_s=verify_s, max_k=max_k)
    assert GoodputSpeculation().decide(obs) == SpecDecision(expected)


@SETTINGS
@given(obs=spec_observations(), other=fracs)
def test_goodput_is_monotone_in_acceptance(obs, other):
    low, high = sorted((obs.acceptance, other))
    policy = GoodputSpeculation(max_k=16)
    k_low = policy.decide(dataclasses.replace(obs, acceptance=low)).draft_len
    k_high = policy.decide(dataclasses.replace(obs, acceptance=high)).draft_len
    assert k_low <= k_high


@SETTINGS
@given(obs=spec_observations(acceptance=st.just(0.0), draft_s=known_costs, verify_s=known_costs))
def test_goodput_never_drafts_what_is_never_accepted(obs):
    assert GoodputSpeculation().decide(obs).draft_len == 0


@SETTINGS
@given(
    obs=spec_observations(acceptance=st.floats(0.0, 0.99), verify_s=known_costs),
    ratio=st.floats(1.0, 100.0),
)
def test_goodput_never_drafts_when_a_draft_token_costs_a_verify_pass(obs, ratio):
    # E(k) < k + 1 for a < 1, and the step costs at least (k + 1) verify passes
    obs = dataclasses.replace(obs, draft_token_s=obs.verify_s * ratio)
    assert GoodputSpeculation().decide(obs).draft_len == 0


# -- the verify pass's extra cost per draft length ------------------------------------------------
def test_verify_extra_is_measured_then_a_line_between_then_flat():
    measured = (0.019, None, None, 0.025)  # drafts 1 and 4 measured (seconds per pass)
    assert verify_extra(0, measured, 0.5) == 0.0
    assert verify_extra(1, measured, 0.5) == 0.019
    assert verify_extra(2, measured, 0.5) == pytest.approx(0.021)  # on the line 1 -> 4
    assert verify_extra(4, measured, 0.5) == 0.025
    assert verify_extra(8, measured, 0.5) == 0.025  # beyond the longest: flat
    assert verify_extra(3, (None, None, None, 0.06)) == pytest.approx(0.045)  # from X(0) = 0
    assert verify_extra(3, (), 0.01) == pytest.approx(0.03)  # none measured: k * per token
    assert verify_extra(3, (None, None), 0.01) == pytest.approx(0.03)


def test_goodput_prices_drafts_by_the_measured_pass_not_a_line_through_the_first():
    # SmolLM2-135M on two CPU threads: a plain pass 41 ms, one draft 19 ms more, four 25 more;
    # a = 0.77, prompt lookup free.  A line through the first draft makes four cost 76 ms more:
    # E(2) / 79 ms = 0.0299 beats E(4) / 117 ms = 0.0271; as measured, four drafts are the best
    # (E(4) / 66 ms = 0.048 per ms, 1.97x a plain step's 1 / 41)
    obs = obs_of(0.77, (0.77,) * 4, last_k=1, draft_s=0.0, verify_s=0.041,
                 verify_token_s=0.019)
    assert GoodputSpeculation(max_k=4).decide(obs).draft_len == 2
    measured = dataclasses.replace(obs, verify_extra_s=(0.019, None, None, 0.025))
    assert GoodputSpeculation(max_k=4).decide(measured).draft_len == 4
