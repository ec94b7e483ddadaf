"""Tiering policies: feasible and deterministic decisions for every kind (Hypothesis), the paper's
appendix A.1 rules and restore on hand-built blocks, monotonicity in memory pressure, and the
baselines' windows, sinks and heavy hitters on hand-computed tables."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.tiering import (
    Fp16Tiering,
    TieringDecision,
    UniformTiering,
)
from policies.tiering_baselines import H2OTiering, KiviTiering, MiKVTiering, StreamingTiering
from policies.tiering_paper import ProgressiveTiering
from tests.policies.tiering_strategies import (
    PROPERTY,
    P,
    all_policies,
    changed,
    observations,
    observe,
    progressives,
    request,
    result,
    unit,
    with_device,
)


# -- every policy ---------------------------------------------------------------------------------
@PROPERTY
@given(policy=all_policies, obs=observations())
def test_decisions_are_feasible(policy, obs):
    decision = policy.decide(obs)
    current = {(b.request_id, b.index): b.precision for b in obs.blocks}
    named = [(rid, i) for rid, i, _ in decision.changes]
    assert len(named) == len(set(named))  # each block at most once
    for rid, i, precision in decision.changes:
        assert (rid, i) in current  # only blocks that exist
        assert isinstance(precision, P) and precision != current[(rid, i)]  # a real change
    assert isinstance(decision.new_block_precision, P)
    assert decision.new_block_precision.is_resident


@PROPERTY
@given(policy=all_policies, obs=observations())
def test_decisions_are_deterministic_and_ignore_block_order(policy, obs):
    twin = dataclasses.replace(obs, blocks=tuple(dataclasses.replace(b) for b in obs.blocks))
    assert dataclasses.replace(policy).decide(twin) == policy.decide(obs)
    backwards = dataclasses.replace(obs, blocks=obs.blocks[::-1])
    assert policy.decide(backwards) == policy.decide(obs)


def test_every_policy_is_tagged_and_says_whether_it_reads_blocks():
    table = {type(p).__name__: (p.kind, p.observes_blocks) for p in [
        Fp16Tiering(), UniformTiering(), ProgressiveTiering(), KiviTiering(), StreamingTiering(),
        H2OTiering(), MiKVTiering()]}
    assert table == {
        "Fp16Tiering": ("fp16", False), "UniformTiering": ("uniform", False),
        "ProgressiveTiering": ("progressive", True), "KiviTiering": ("kivi", True),
        "StreamingTiering": ("streaming", True), "H2OTiering": ("h2o", True),
        "MiKVTiering": ("mikv", True)}


@pytest.mark.parametrize("make", [
    lambda: ProgressiveTiering(alpha=0.5, beta=0.5, gamma=0.5),
    lambda: ProgressiveTiering(alpha=1.2, beta=-0.2, gamma=0.0),
    lambda: ProgressiveTiering(offload_pressure=1.5),
    lambda: ProgressiveTiering(keep_recent_blocks=-1),
    lambda: KiviTiering(bits="int8"),
    lambda: KiviTiering(residual_tokens=-1),
    lambda: StreamingTiering(sink_tokens=-4),
    lambda: H2OTiering(heavy_frac=1.5),
    lambda: MiKVTiering(low="evicted"),
])
def test_bad_parameters_are_refused(make):
    with pytest.raises(ValueError):
        make()


# -- progressive: the appendix A.1 rules ----------------------------------------------------------
def lone(share=0.0, access=0, age=10, relevance=0.0, precision=P.FP16):
    """A one-block request: its attention term is 1 if share > 0, else 0."""
    return request(0, 1, attention_share=share, access_count=access, age_steps=age,
                   relevance=relevance, precision=precision)


# importance with the default weights 0.5 / 0.3 / 0.2, by hand:
IMP_00 = dict(share=0.0, access=0, relevance=-1.0)  # 0 + 0 + 0
IMP_02 = dict(share=0.0, access=0, relevance=1.0)  # 0 + 0 + 0.2 x 1
IMP_03 = dict(share=0.0, access=10, relevance=-1.0)  # 0 + 0.3 x 10/10 + 0
IMP_04 = dict(share=0.0, access=10, relevance=0.0)  # 0 + 0.3 + 0.2 x 0.5
IMP_06 = dict(share=0.5, access=0, relevance=0.0)  # 0.5 x 1 + 0 + 0.2 x 0.5
IMP_10 = dict(share=0.5, access=10, relevance=1.0)  # 0.5 + 0.3 + 0.2


@pytest.mark.parametrize("used, block, evict, expected", [
    (900, lone(**IMP_02), False, P.OFFLOADED),
    (900, lone(**IMP_02), True, P.EVICTED),
    (900, lone(**IMP_00), False, P.OFFLOADED),
    (800, lone(**IMP_02), False, P.INT4),  # pressure 0.8 is not > 0.8
    (700, lone(**IMP_02), False, P.INT4),
    (600, lone(**IMP_02), False, P.INT8),  # 0.6 is not > 0.6
    (900, lone(**IMP_03), False, P.INT4),  # importance 0.3 is not < 0.3
    (900, lone(**IMP_04), False, P.INT4),
    (900, lone(share=0.0, access=30, age=10, relevance=-1.0), False, P.INT4),  # frequency <= 1
    (500, lone(**IMP_04), False, P.INT8),
    (950, lone(**IMP_06), False, P.INT8),  # 0.6 >= 0.5, < 0.7
    (950, lone(**IMP_10), False, P.FP16),
    (100, lone(**IMP_10), False, P.FP16),
    (100, lone(share=0.5, access=257, age=257, relevance=1.0), False, P.INT8),  # age > 256
    (100, lone(share=0.5, access=256, age=256, relevance=1.0), False, P.FP16),  # age = 256
])
def test_appendix_a1_rules_on_single_blocks(used, block, evict, expected):
    policy = ProgressiveTiering(keep_recent_blocks=0, evict=evict)
    obs = observe(block, device=(used, 1000))
    assert result(obs, policy.decide(obs))[(0, 0)] == expected


def test_attention_is_relative_to_the_requests_top_block():
    # shares 0.2 / 0.8 and 0.02 / 0.08: attention terms 0.25 and 1 in both requests, so
    # importance 0.125 (level 3 at pressure 0.9) and 0.5 (INT8); all-zero shares score 0
    blocks = (request(0, 2, attention_share=[0.2, 0.8], relevance=-1.0)
              + request(1, 2, attention_share=[0.02, 0.08], relevance=-1.0)
              + request(2, 2, attention_share=0.0, relevance=-1.0))
    obs = observe(blocks, device=(900, 1000))
    assert changed(obs, ProgressiveTiering(keep_recent_blocks=0)) == {
        (0, 0): P.OFFLOADED, (0, 1): P.INT8, (1, 0): P.OFFLOADED, (1, 1): P.INT8,
        (2, 0): P.OFFLOADED, (2, 1): P.OFFLOADED}


def test_newest_blocks_stay_fp16():
    obs = observe(request(0, 3, relevance=1.0), device=(900, 1000))  # importance 0.2 each
    assert changed(obs, ProgressiveTiering()) == {(0, 0): P.OFFLOADED, (0, 1): P.OFFLOADED}
    assert changed(obs, ProgressiveTiering(keep_recent_blocks=2)) == {(0, 0): P.OFFLOADED}


def test_rules_only_lower_a_block():
    # importance 1.0 at low pressure says FP16, but an INT4 block stays INT4 (no restore asked)
    obs = observe(lone(**IMP_10, precision=P.INT4), device=(100, 1000))
    assert changed(obs, ProgressiveTiering(keep_recent_blocks=0)) == {}


def test_full_host_tier_turns_the_least_important_offloads_into_evictions():
    # importance 0.15, 0.1, 0.05, 0 (relevance 0.5 .. -1), then the newest block kept at FP16.
    # 5 FP16 blocks use 900 bytes: 180 per block; the host has 400 free: two copies fit; block 3
    # has its FP16 copy there already and needs no room
    blocks = request(0, 5, relevance=[0.5, 0.0, -0.5, -1.0, 1.0],
                     has_backup=[False, False, False, True, False])
    obs = observe(blocks, device=(900, 1000), host=(100, 500))
    assert changed(obs, ProgressiveTiering()) == {
        (0, 0): P.OFFLOADED, (0, 1): P.OFFLOADED, (0, 2): P.EVICTED, (0, 3): P.OFFLOADED}
    no_host = observe(blocks, device=(900, 1000))
    assert set(changed(no_host, ProgressiveTiering()).values()) == {P.OFFLOADED}


# -- progressive: the restore rule -----------------------------------------------------------------
def ten_int4(**fields):
    """10 INT4 blocks of importance 0.3 + 0.1 x (relevance + 1): 0.30, 0.32, .., 0.48 (block 9
    the most important); the rules keep all at INT4 at any pressure."""
    kw = dict(precision=P.INT4, access_count=10, relevance=[-1 + 0.2 * i for i in range(10)])
    kw.update(fields)
    return request(0, 10, **kw)


def test_quality_over_budget_restores_the_most_important_block():
    # fp16 estimate: 500 bytes / (10 x 0.25) = 200; raising INT4 adds 150; room 800 - 500
    policy = ProgressiveTiering(keep_recent_blocks=0)
    assert changed(observe(ten_int4(), device=(500, 1000), quality=0.6), policy) == {
        (0, 9): P.FP16}
    assert changed(observe(ten_int4(), device=(500, 1000), quality=0.5), policy) == {}


def test_no_restore_above_the_offload_pressure():
    policy = ProgressiveTiering(keep_recent_blocks=0, restore_frac=1.0)
    assert changed(observe(ten_int4(), device=(810, 1000), quality=5.0), policy) == {}


def test_restore_stops_before_the_device_passes_the_offload_pressure():
    # top 30 % = blocks 9, 8, 7 at 150 bytes each; room 0.8 x 1010 - 500 = 308: two fit
    policy = ProgressiveTiering(keep_recent_blocks=0, restore_frac=0.3)
    assert changed(observe(ten_int4(), device=(500, 1010), quality=0.6), policy) == {
        (0, 9): P.FP16, (0, 8): P.FP16}
    assert changed(observe(ten_int4(), device=(500, 10**6), quality=0.6), policy) == {
        (0, 9): P.FP16, (0, 8): P.FP16, (0, 7): P.FP16}


def test_restore_brings_back_an_offloaded_block_and_keeps_a_backup():
    blocks = ten_int4(precision=[P.INT4] * 9 + [P.OFFLOADED])
    decision = ProgressiveTiering(keep_recent_blocks=0).decide(
        observe(blocks, device=(500, 1000), quality=0.6))
    assert decision == TieringDecision(((0, 9, P.FP16),), P.FP16, keep_backup=True)


def test_demotions_are_listed_before_raises():
    # request 0: an INT4 block of importance 1.0 (restored); request 1: an FP16 block of
    # importance 0.4 and its newest block: the first goes to INT8 at pressure 0.5
    blocks = lone(**IMP_10, precision=P.INT4) + request(1, 2, access_count=10)
    decision = ProgressiveTiering().decide(observe(blocks, device=(500, 1000), quality=1.0))
    assert decision.changes == ((1, 0, P.INT8), (0, 0, P.FP16))


def test_offloads_are_listed_before_requantizations():
    # pressure 0.9: request 0's old block (importance 0.4) goes to INT4, request 1's (0.2) is
    # offloaded; its host copy must be claimed before INT4's best-effort FP16 backup
    blocks = request(0, 2, access_count=10) + request(1, 2, relevance=1.0)
    decision = ProgressiveTiering().decide(observe(blocks, device=(900, 1000), host=(0, 10**6)))
    assert decision.changes == ((1, 0, P.OFFLOADED), (0, 0, P.INT4))


@PROPERTY
@given(policy=progressives, obs=observations(), capacity=st.integers(1, 10**9),
       fracs=st.tuples(unit, unit))
def test_more_device_pressure_never_raises_a_blocks_precision(policy, obs, capacity, fracs):
    low, high = (with_device(obs, int(f * capacity), capacity) for f in sorted(fracs))
    at_low, at_high = result(low, policy.decide(low)), result(high, policy.decide(high))
    assert all(at_high[k] >= at_low[k] for k in at_low)
