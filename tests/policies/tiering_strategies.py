"""Shared builders and Hypothesis strategies of the tiering-policy tests
(``test_tiering``, ``test_tiering_baselines``): blocks and observations built by
hand, random observations, and every tiering policy with drawn parameters."""

from __future__ import annotations

import dataclasses

from hypothesis import settings
from hypothesis import strategies as st

from policies.precision import Precision
from policies.tiering import (
    BlockInfo,
    Fp16Tiering,
    TieringDecision,
    TieringObservation,
    TierPressure,
    UniformTiering,
)
from policies.tiering_baselines import H2OTiering, KiviTiering, MiKVTiering, StreamingTiering
from policies.tiering_paper import ProgressiveTiering

P = Precision
PROPERTY = settings(derandomize=True, deadline=None, max_examples=200)
unit = st.floats(0.0, 1.0, allow_nan=False)


# -- builders -------------------------------------------------------------------------------------
def request(rid: int, n: int, **fields) -> list[BlockInfo]:
    """``n`` blocks of one request, oldest first; ``fields`` values are per-block lists or one
    value for all."""
    defaults = dict(precision=P.FP16, age_steps=10, attention_mass=0.0, access_count=0,
                    relevance=0.0, attention_share=0.0, has_backup=False)
    defaults.update(fields)
    out = []
    for i in range(n):
        kw = {k: v[i] if isinstance(v, list) else v for k, v in defaults.items()}
        out.append(BlockInfo(rid, i, position_from_end=n - 1 - i, **kw))
    return out


def observe(blocks, device=(0, 1000), host=None, quality=0.0, block_tokens=16):
    pressures = [TierPressure("device", *device)]
    if host is not None:
        pressures.append(TierPressure("host", *host))
    return TieringObservation(tuple(blocks), tuple(pressures), block_tokens, quality)


def with_device(obs: TieringObservation, used: int, capacity: int) -> TieringObservation:
    others = tuple(p for p in obs.pressures if p.tier != "device")
    return dataclasses.replace(obs, pressures=(TierPressure("device", used, capacity), *others))


def result(obs: TieringObservation, decision: TieringDecision) -> dict[tuple[int, int], P]:
    out = {(b.request_id, b.index): b.precision for b in obs.blocks}
    out.update({(rid, i): p for rid, i, p in decision.changes})
    return out


def changed(obs, policy) -> dict[tuple[int, int], P]:
    return {(rid, i): p for rid, i, p in policy.decide(obs).changes}


# -- strategies -----------------------------------------------------------------------------------
@st.composite
def observations(draw, max_requests: int = 4, max_blocks: int = 12, all_fp16: bool = False):
    block_tokens = draw(st.sampled_from([1, 4, 16, 48]))
    blocks = []
    for rid in draw(st.lists(st.integers(0, 63), max_size=max_requests, unique=True)):
        n = draw(st.integers(1, max_blocks))
        for i in range(n):
            blocks.append(BlockInfo(
                rid, i,
                P.FP16 if all_fp16 else draw(st.sampled_from(list(P))),
                age_steps=draw(st.integers(0, 600)),
                attention_mass=draw(st.floats(0.0, 50.0)),
                access_count=draw(st.integers(0, 600)),
                relevance=draw(st.floats(-1.0, 1.0)),
                position_from_end=n - 1 - i,
                attention_share=draw(st.one_of(st.just(0.0), unit)),
                has_backup=draw(st.booleans())))
    blocks = draw(st.permutations(blocks))  # the engine promises no order
    capacity = draw(st.sampled_from([1, 1000, 10**6, 10**9]))
    frac = draw(st.one_of(st.sampled_from([0.0, 0.6, 0.8, 1.0]), unit))
    pressures = [TierPressure("device", int(frac * capacity), capacity)]
    if draw(st.booleans()):
        host_cap = draw(st.integers(0, 10**9))
        pressures.append(TierPressure("host", draw(st.integers(0, host_cap)), host_cap))
    quality = draw(st.one_of(st.sampled_from([0.0, 0.5, 0.6]), st.floats(0.0, 2.0)))
    return TieringObservation(tuple(blocks), tuple(pressures), block_tokens, quality,
                              draw(st.integers(0, 10**6)))


progressives = st.builds(
    ProgressiveTiering,
    offload_pressure=unit, offload_importance=unit, int4_pressure=unit, int4_importance=unit,
    int8_importance=unit, age_limit_steps=st.integers(0, 600),
    keep_recent_blocks=st.integers(0, 3), evict=st.booleans(),
    quality_budget_ppl=st.sampled_from([0.0, 0.5, 1.0]),
    restore_frac=st.sampled_from([0.0, 0.1, 0.5, 1.0]), keep_backup=st.booleans())
low_bits = st.sampled_from(["int4", "int2"])
kivis = st.builds(KiviTiering, residual_tokens=st.integers(0, 300), bits=low_bits)
streamings = st.builds(StreamingTiering, sink_tokens=st.integers(0, 40),
                       window_tokens=st.integers(0, 300))
h2os = st.builds(H2OTiering, heavy_frac=unit, recent_tokens=st.integers(0, 300))
mikvs = st.builds(MiKVTiering, heavy_frac=unit, recent_tokens=st.integers(0, 300), low=low_bits)
baselines = st.one_of(kivis, streamings, h2os, mikvs)
all_policies = st.one_of(
    st.sampled_from([Fp16Tiering(), UniformTiering(precision="int8"), UniformTiering(),
                     UniformTiering(precision="int2"),
                     ProgressiveTiering(), KiviTiering(), StreamingTiering(), H2OTiering(),
                     MiKVTiering()]),
    progressives, baselines)
