"""Buffer policies: hand-computed sizes (adaptive geometric growth, its cap and pool reuse; powers
of two), Hypothesis properties every buffer policy must keep (feasible reuse, enough bytes,
determinism), and request sequences driven through the real
``sim.engine.buffer_pool.BufferPool``."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.buffer_sizing import AdaptiveBuffers, Pow2Buffers
from policies.buffers import BufferDecision, BufferObservation, ExactBuffers, PreallocatedBuffers
from sim.engine.buffer_pool import BufferPool

SETTINGS = settings(derandomize=True, deadline=None, max_examples=200)
MiB, GiB = 2**20, 2**30

POLICIES = (
    ExactBuffers(),
    PreallocatedBuffers(),
    PreallocatedBuffers(max_bytes=1),
    AdaptiveBuffers(),
    AdaptiveBuffers(growth=1.0, max_bytes=0, window=0),
    AdaptiveBuffers(growth=3.0, max_bytes=2**40, window=2),
    Pow2Buffers(),
)
NEW_CLASSES = (AdaptiveBuffers, Pow2Buffers)


def obs_of(
    requested: int, current: int = 0, history: tuple[int, ...] = (), pool: tuple[int, ...] = ()
) -> BufferObservation:
    return BufferObservation("logits", requested, current, history, pool)


# -- strategies ----------------------------------------------------------------------------------
sizes = st.integers(1, 2**36)
small_sizes = st.integers(1, 4096)  # collide often, so reuse paths are taken


@st.composite
def buffer_observations(draw):
    size = draw(st.sampled_from((sizes, small_sizes)))
    return BufferObservation(
        name=draw(st.sampled_from(("logits", "hidden"))),
        requested_bytes=draw(size),
        current_bytes=draw(st.one_of(st.just(0), size)),
        history_bytes=tuple(draw(st.lists(size, max_size=16))),
        pool_free_bytes=tuple(draw(st.lists(size, max_size=8))),
    )


# -- every policy ----------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: repr(p))
@SETTINGS
@given(obs=buffer_observations())
def test_decision_is_feasible(policy, obs):
    d = policy.decide(obs)
    assert isinstance(d, BufferDecision)
    if d.reuse:
        assert obs.current_bytes >= obs.requested_bytes or any(
            b >= obs.requested_bytes for b in obs.pool_free_bytes
        )
    else:
        assert isinstance(d.alloc_bytes, int) and d.alloc_bytes >= obs.requested_bytes


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: repr(p))
@SETTINGS
@given(obs=buffer_observations())
def test_decision_is_deterministic(policy, obs):
    twin = dataclasses.replace(policy)
    copy = dataclasses.replace(obs, history_bytes=tuple(list(obs.history_bytes)))
    assert policy.decide(obs) == policy.decide(obs) == twin.decide(copy)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: repr(p))
@SETTINGS
@given(requests=st.lists(st.one_of(small_sizes, st.integers(1, 64 * MiB)), min_size=1, max_size=40))
def test_the_real_pool_accepts_every_decision(policy, requests):
    pool = BufferPool(policy)
    for i, requested in enumerate(requests):
        name = ("logits", "hidden")[i % 2]
        allocs, alloc_bytes, copied = pool.request(name, requested)  # raises if infeasible
        assert copied == 0  # nothing to preserve in scratch buffers
        assert pool.held[name] >= requested
        assert allocs in (0, 1) and (alloc_bytes == 0) == (allocs == 0)
    assert pool.stats.num_allocs + pool.stats.num_reuses == len(requests)


@pytest.mark.parametrize("cls", NEW_CLASSES)
def test_policy_is_a_frozen_slotted_dataclass_with_a_kind(cls):
    policy = cls()
    assert not hasattr(policy, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.kind = "other"
    assert typing.get_args(typing.get_type_hints(cls)["kind"]) == (policy.kind,)


@pytest.mark.parametrize("params", [{"growth": 0.5}, {"max_bytes": -1}, {"window": -1}])
def test_adaptive_refuses_bad_parameters(params):
    with pytest.raises(ValueError):
        AdaptiveBuffers(**params)


# -- adaptive ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        (obs_of(1000, current=1000), BufferDecision(1000, reuse=True)),  # held buffer fits
        (obs_of(1000, current=4000), BufferDecision(4000, reuse=True)),
        # held too small; the smallest pool buffer that fits is 600
        (obs_of(500, current=400, pool=(300, 1000, 600)), BufferDecision(600, reuse=True)),
        (obs_of(1000), BufferDecision(1500)),  # 1000 x 1.5
        (obs_of(1001), BufferDecision(1502)),  # 1501.5, rounded up
        (obs_of(100, history=(4000, 100, 200)), BufferDecision(6000)),  # recent peak 4000 x 1.5
        (obs_of(100, current=50, pool=(60,), history=(200,)), BufferDecision(300)),
        (obs_of(800 * MiB), BufferDecision(GiB)),  # 1200 MiB, capped at 1 GiB
        (obs_of(10 * MiB, history=(900 * MiB,)), BufferDecision(GiB)),  # 1350 MiB, capped
        (obs_of(2 * GiB), BufferDecision(2 * GiB)),  # above the cap: the request itself
    ],
)
def test_adaptive_hand_computed(obs, expected):
    assert AdaptiveBuffers().decide(obs) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (AdaptiveBuffers(window=2), 300),  # history (4000, 100, 200): last two, peak 200 x 1.5
        (AdaptiveBuffers(window=0), 150),  # no history: 100 x 1.5
        (AdaptiveBuffers(growth=2.0), 8000),  # 4000 x 2
        (AdaptiveBuffers(max_bytes=5000), 5000),  # 6000, capped
        (AdaptiveBuffers(max_bytes=50), 100),  # the cap never goes below the request
    ],
)
def test_adaptive_parameters(policy, expected):
    assert policy.decide(obs_of(100, history=(4000, 100, 200))).alloc_bytes == expected


def test_adaptive_grows_geometrically():
    # each request just outgrows the buffer before it: 1000 -> 1500; 1501 -> 2251.5 -> 2252;
    # 2253 -> 3379.5 -> 3380; 3381 -> 5071.5 -> 5072 (history peak = the request every time)
    policy, current, history, sizes = AdaptiveBuffers(), 0, (), []
    for _ in range(4):
        requested = current + 1 if current else 1000
        current = policy.decide(obs_of(requested, current, history)).alloc_bytes
        history += (requested,)
        sizes.append(current)
    assert sizes == [1500, 2252, 3380, 5072]


def test_adaptive_through_the_pool_allocates_logarithmically():
    # requests 1000, 1100, ..., 10000 (91 of them): exact allocates 91 times; adaptive at
    # 1000 -> 1500, 1600 -> 2400, 2500 -> 3750, 3800 -> 5700, 5800 -> 8700, 8800 -> 13200
    # (the pool never holds a big enough freed buffer, all being smaller than the next request)
    counts = {}
    for policy in (ExactBuffers(), AdaptiveBuffers()):
        pool = BufferPool(policy)
        for requested in range(1000, 10001, 100):
            pool.request("logits", requested)
        counts[policy.kind] = (pool.stats.num_allocs, pool.held["logits"])
    assert counts == {"exact": (91, 10000), "adaptive": (6, 13200)}


@SETTINGS
@given(obs=buffer_observations(), growth=st.floats(1.0, 4.0), cap=st.integers(0, 2**40))
def test_adaptive_respects_the_cap_and_reuses_whenever_it_can(obs, growth, cap):
    d = AdaptiveBuffers(growth=growth, max_bytes=cap).decide(obs)
    can_reuse = obs.current_bytes >= obs.requested_bytes or any(
        b >= obs.requested_bytes for b in obs.pool_free_bytes
    )
    assert d.reuse == can_reuse
    if not d.reuse:
        assert obs.requested_bytes <= d.alloc_bytes <= max(cap, obs.requested_bytes)
        assert d.alloc_bytes >= min(cap, max((obs.requested_bytes, *obs.history_bytes)))


# -- pow2 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        (obs_of(1), BufferDecision(1)),
        (obs_of(2), BufferDecision(2)),
        (obs_of(3), BufferDecision(4)),
        (obs_of(1000), BufferDecision(1024)),
        (obs_of(1024), BufferDecision(1024)),
        (obs_of(1025), BufferDecision(2048)),
        (obs_of(GiB + 1), BufferDecision(2 * GiB)),
        (obs_of(1000, current=1024), BufferDecision(1024, reuse=True)),
        (obs_of(1000, current=999, pool=(4096,)), BufferDecision(1024)),  # ignores the pool
    ],
)
def test_pow2_hand_computed(obs, expected):
    assert Pow2Buffers().decide(obs) == expected


@SETTINGS
@given(obs=buffer_observations())
def test_pow2_allocates_a_power_of_two_under_twice_the_request(obs):
    d = Pow2Buffers().decide(obs)
    assert d.reuse == (obs.current_bytes >= obs.requested_bytes)
    if not d.reuse:
        assert d.alloc_bytes & (d.alloc_bytes - 1) == 0
        assert obs.requested_bytes <= d.alloc_bytes < 2 * obs.requested_bytes
