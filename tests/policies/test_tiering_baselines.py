"""The field's tiering baselines (uniform, KIVI, StreamingLLM, H2O, MiKV): hand-computed block
precisions.  Shared builders and strategies come from ``tiering_strategies``."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given

from policies.tiering_baselines import H2OTiering, KiviTiering, MiKVTiering, StreamingTiering
from tests.policies.tiering_strategies import (
    PROPERTY,
    P,
    baselines,
    changed,
    h2os,
    kivis,
    mikvs,
    observations,
    observe,
    request,
    result,
    streamings,
)


# -- baselines ------------------------------------------------------------------------------------
@PROPERTY
@given(policy=baselines, obs=observations())
def test_baselines_only_lower_and_never_bring_back_an_evicted_block(policy, obs):
    after = result(obs, policy.decide(obs))
    for b in obs.blocks:
        assert after[(b.request_id, b.index)] >= b.precision
    assert policy.decide(obs).keep_backup is False


@PROPERTY
@given(policy=kivis, obs=observations(all_fp16=True))
def test_kivi_keeps_exactly_the_residual_window_at_fp16(policy, obs):
    after = result(obs, policy.decide(obs))
    low = P[policy.bits.upper()]
    for b in obs.blocks:
        # the block's newest token is position_from_end x block_tokens tokens from the end
        in_window = b.position_from_end * obs.block_tokens < policy.residual_tokens
        assert after[(b.request_id, b.index)] == (P.FP16 if in_window else low)


def test_kivi_table():
    # 128 residual tokens = 8 blocks of 16, 3 blocks of 48
    obs = observe(request(0, 10) + request(1, 3), block_tokens=16)
    assert changed(obs, KiviTiering()) == {(0, 0): P.INT2, (0, 1): P.INT2}
    obs48 = observe(request(0, 5, precision=[P.INT8, P.OFFLOADED, P.INT8, P.FP16, P.INT8]),
                    block_tokens=48)
    assert changed(obs48, KiviTiering(bits="int4")) == {(0, 0): P.INT4}


@PROPERTY
@given(policy=streamings, obs=observations())
def test_streaming_keeps_sinks_and_window_and_evicts_the_rest(policy, obs):
    after = result(obs, policy.decide(obs))
    for b in obs.blocks:
        is_sink = b.index * obs.block_tokens < policy.sink_tokens
        in_window = b.position_from_end * obs.block_tokens < policy.window_tokens
        expected = b.precision if is_sink or in_window else P.EVICTED
        assert after[(b.request_id, b.index)] == expected


def test_streaming_table():
    # sinks: 4 tokens -> block 0; 20 tokens -> blocks 0, 1; window 32 tokens = 2 blocks
    obs = observe(request(0, 6, precision=[P.FP16, P.INT8, P.FP16, P.OFFLOADED, P.FP16, P.FP16]))
    evicted = {(0, 1): P.EVICTED, (0, 2): P.EVICTED, (0, 3): P.EVICTED}
    assert changed(obs, StreamingTiering(window_tokens=32)) == evicted
    assert changed(obs, StreamingTiering(sink_tokens=20, window_tokens=32)) == {
        (0, 2): P.EVICTED, (0, 3): P.EVICTED}


@PROPERTY
@given(policy=h2os, obs=observations())
def test_h2o_keeps_the_heaviest_blocks(policy, obs):
    after = result(obs, policy.decide(obs))
    per_request = defaultdict(list)
    for b in obs.blocks:
        per_request[b.request_id].append(b)
    for req in per_request.values():
        outside = [b for b in req if b.position_from_end * obs.block_tokens >= policy.recent_tokens
                   and b.precision != P.EVICTED]
        kept = [b for b in outside if after[(b.request_id, b.index)] != P.EVICTED]
        dropped = [b for b in outside if after[(b.request_id, b.index)] == P.EVICTED]
        assert all(k.attention_mass >= d.attention_mass for k in kept for d in dropped)
        assert len(kept) == len(outside) or len(kept) >= policy.heavy_frac * len(req) - 1e-6
        assert len(kept) == 0 or len(kept) - 1 < policy.heavy_frac * len(req) + 1e-6
        for b in req:  # the window is never evicted
            if b.position_from_end * obs.block_tokens < policy.recent_tokens:
                assert after[(b.request_id, b.index)] == b.precision


MASSES = [5.0, 0.1, 3.0, 0.2, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0]


def test_h2o_table():
    # 10 blocks: 2 heavy hitters (20 %) + 2 recent (32 tokens); blocks 2 and 4 tie at 3.0: the
    # older one wins
    obs = observe(request(0, 10, attention_mass=MASSES))
    kept = {0, 2, 8, 9}
    assert changed(obs, H2OTiering(recent_tokens=32)) == {
        (0, i): P.EVICTED for i in range(10) if i not in kept}
    # an evicted block is no candidate: block 4 takes block 2's place
    obs2 = observe(request(0, 10, attention_mass=MASSES, precision=[P.FP16] * 2 + [P.EVICTED]
                           + [P.FP16] * 7))
    assert changed(obs2, H2OTiering(recent_tokens=32)) == {
        (0, i): P.EVICTED for i in range(10) if i not in {0, 2, 4, 8, 9}}


@PROPERTY
@given(policy=mikvs, obs=observations())
def test_mikv_never_evicts(policy, obs):
    for _, _, precision in policy.decide(obs).changes:
        assert precision != P.EVICTED


def test_mikv_table():
    obs = observe(request(0, 10, attention_mass=MASSES, precision=[P.FP16] * 9 + [P.INT8])
                  + request(1, 3, precision=[P.INT2, P.OFFLOADED, P.FP16]))
    assert changed(obs, MiKVTiering(recent_tokens=32)) == {
        (0, i): P.INT4 for i in range(10) if i not in {0, 2, 8, 9}}
    # request 1: blocks 1 and 2 are the recent window, block 0 its one heavy hitter (20 % of 3
    # blocks, rounded up): nothing changes.  With low int2, block 1 of request 0 goes to INT2
    assert changed(obs, MiKVTiering(recent_tokens=32, low="int2"))[(0, 1)] == P.INT2
