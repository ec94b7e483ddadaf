"""The example policies against infer-os's policy-testing kit (``sim.testing``), a planted bug
the kit must catch, and plain unit tests of each ``decide``.

Run from the repository root, with this package installed beside infer-os:
``python -m pytest docs/examples/policy-pack/tests``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest
from example_policies.speculation import BackoffSpeculation, paying_draft_len
from example_policies.tiering import RecencyTiering
from hypothesis import given, settings

from policies import (
    BlockInfo,
    Precision,
    SpecObservation,
    TieringDecision,
    TieringObservation,
    TierPressure,
)
from sim.testing import check_conformance, check_in_simulator, spec_observations

CONFORMANCE_EXAMPLES = 200  # generated observations per policy (the kit's default)
SIMULATOR_EXAMPLES = 10  # generated workloads per policy, each a full simulated run

POLICIES = [
    RecencyTiering(),
    RecencyTiering(recent_blocks=0, int4_pressure=0.0),  # demote everything, to INT4
    RecencyTiering(recent_blocks=1, int4_pressure=0.3),
    BackoffSpeculation(),
    BackoffSpeculation(increase=2, backoff=0.25, probe_every=4),
]


# -- the kit ---------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_conformance(policy):
    check_conformance(policy, max_examples=CONFORMANCE_EXAMPLES)


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_in_simulator(policy, tmp_path):
    check_in_simulator(policy, max_examples=SIMULATOR_EXAMPLES, tmp_dir=tmp_path)


@dataclass(frozen=True, slots=True)
class BrokenTiering:
    """A planted bug (deliberately not registered): restores blocks to FP16 when pressure is
    HIGH (the comparison is flipped).  ``check_conformance`` must catch it."""

    kind: Literal["broken"] = "broken"
    observes_blocks: ClassVar[bool] = True

    def decide(self, obs: TieringObservation) -> TieringDecision:
        target = Precision.FP16 if obs.pressure("device") > 0.5 else Precision.INT4
        return TieringDecision(tuple((b.request_id, b.index, target) for b in obs.blocks
                                     if b.precision.is_resident and b.precision != target))


def test_the_kit_catches_the_planted_bug():
    with pytest.raises(AssertionError) as err:
        check_conformance(BrokenTiering(), max_examples=CONFORMANCE_EXAMPLES)
    text = str(err.value) + "".join(str(n) for n in getattr(err.value, "__notes__", []))
    assert "more pressure raised its precision" in text


# -- recency: unit tests ---------------------------------------------------------------------
def _blocks(n: int, precision: Precision = Precision.FP16, rid: int = 0) -> list[BlockInfo]:
    return [BlockInfo(rid, i, precision, age_steps=n - i, attention_mass=0.0, access_count=0,
                      position_from_end=n - 1 - i) for i in range(n)]


def _tiering_obs(blocks, pressure: float = 0.1) -> TieringObservation:
    return TieringObservation(tuple(blocks), (TierPressure("device", int(pressure * 1000), 1000),),
                              block_tokens=16)


def _after(policy, obs: TieringObservation) -> dict[tuple[int, int], Precision]:
    out = {(b.request_id, b.index): b.precision for b in obs.blocks}
    out.update({(r, i): p for r, i, p in policy.decide(obs).changes})
    return out


def test_recency_keeps_the_newest_blocks_at_fp16_and_demotes_the_rest():
    blocks = _blocks(5) + _blocks(2, rid=1)
    after = _after(RecencyTiering(recent_blocks=2), _tiering_obs(blocks, pressure=0.1))
    assert [after[0, i] for i in range(5)] == [Precision.INT8] * 3 + [Precision.FP16] * 2
    assert [after[1, i] for i in range(2)] == [Precision.FP16] * 2  # short request: untouched


def test_recency_goes_to_int4_above_the_pressure_threshold():
    policy = RecencyTiering(recent_blocks=1, int4_pressure=0.5)
    low = _after(policy, _tiering_obs(_blocks(3), pressure=0.5))
    high = _after(policy, _tiering_obs(_blocks(3), pressure=0.51))
    assert [low[0, i] for i in range(3)] == [Precision.INT8, Precision.INT8, Precision.FP16]
    assert [high[0, i] for i in range(3)] == [Precision.INT4, Precision.INT4, Precision.FP16]


def test_recency_never_raises_a_block_nor_touches_offloaded_or_evicted_ones():
    blocks = [dataclasses.replace(b, precision=p) for b, p in zip(
        _blocks(4), [Precision.OFFLOADED, Precision.EVICTED, Precision.INT4, Precision.INT2])]
    # all four are among the newest, so FP16 is wanted for each: none may be raised or restored
    assert RecencyTiering(recent_blocks=4).decide(_tiering_obs(blocks)).changes == ()
    # old and pressed: INT4 wanted; the INT2 block stays INT2, the INT4 one needs no change
    assert RecencyTiering(recent_blocks=0, int4_pressure=0.0).decide(
        _tiering_obs(blocks, pressure=0.9)).changes == ()


def test_recency_rejects_a_negative_window():
    with pytest.raises(ValueError, match="recent_blocks"):
        RecencyTiering(recent_blocks=-1)


# -- backoff: unit tests ---------------------------------------------------------------------
def _spec_obs(**kw) -> SpecObservation:
    base = dict(acceptance=0.9, acceptance_history=(0.9,) * 8, last_draft_len=4,
                last_all_accepted=True, draft_token_s=0.0, verify_s=0.05, max_draft_len=8,
                verify_token_s=0.005)  # one draft token costs c = 0.1 of a plain step
    return SpecObservation(**{**base, **kw})


def test_backoff_grows_by_increase_after_a_fully_accepted_step():
    assert BackoffSpeculation().decide(_spec_obs()).draft_len == 5
    assert BackoffSpeculation(increase=3).decide(_spec_obs()).draft_len == 7


def test_backoff_cuts_multiplicatively_after_a_rejection_but_keeps_one():
    assert BackoffSpeculation().decide(_spec_obs(last_all_accepted=False)).draft_len == 2
    assert BackoffSpeculation(backoff=0.25).decide(
        _spec_obs(last_draft_len=8, last_all_accepted=False)).draft_len == 2
    assert BackoffSpeculation().decide(
        _spec_obs(last_draft_len=1, last_all_accepted=False)).draft_len == 1


def test_backoff_never_exceeds_the_engines_limit():
    policy = BackoffSpeculation(increase=5)
    for limit in range(0, 6):
        obs = _spec_obs(last_draft_len=limit, max_draft_len=limit, acceptance=1.0)
        assert policy.decide(obs).draft_len == limit


def test_backoff_drafts_less_when_acceptance_is_low():
    policy = BackoffSpeculation()
    high = policy.decide(_spec_obs(acceptance=0.9)).draft_len
    low = policy.decide(_spec_obs(acceptance=0.3)).draft_len  # 0.3 > c = 0.1 > 0.3^2
    assert (high, low) == (5, 1)


def test_backoff_stops_when_a_draft_cannot_pay_and_probes_while_stopped():
    policy = BackoffSpeculation(probe_every=16)
    # acceptance 0.4 against a draft token costing half a plain step (c = 0.5): no k pays
    costly = dict(acceptance=0.4, draft_token_s=0.02, verify_token_s=0.005, verify_s=0.05)
    assert policy.decide(_spec_obs(**costly)).draft_len == 0
    off = dict(costly, last_draft_len=0)
    assert policy.decide(_spec_obs(**off, steps_since_draft=15)).draft_len == 0
    assert policy.decide(_spec_obs(**off, steps_since_draft=16)).draft_len == 1  # a probe
    # and drafting resumes once the acceptance pays for the draft again
    assert policy.decide(_spec_obs(**{**off, "acceptance": 0.6})).draft_len == 1


def test_backoff_starts_with_a_plain_step_then_a_one_token_probe():
    first = _spec_obs(acceptance=0.0, acceptance_history=(), last_draft_len=0,
                      last_all_accepted=False, verify_s=0.0, verify_token_s=0.0)
    assert BackoffSpeculation().decide(first).draft_len == 0
    second = dataclasses.replace(first, verify_s=0.05, steps_since_draft=1)
    assert BackoffSpeculation().decide(second).draft_len == 1


def test_paying_draft_len_is_the_last_token_that_pays():
    assert paying_draft_len(0.5, 0.2, 8) == 2  # 0.5, 0.25 > 0.2 >= 0.125
    assert paying_draft_len(0.5, 0.0, 8) == 8  # a free draft: no cap
    assert paying_draft_len(1.0, 1.0, 8) == 0  # a token costing a whole step never pays


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(spec_observations(), spec_observations())
def test_backoff_higher_acceptance_never_gives_a_shorter_draft(obs, other):
    low, high = sorted((obs.acceptance, other.acceptance))
    policy = BackoffSpeculation()
    at_low = policy.decide(dataclasses.replace(obs, acceptance=low)).draft_len
    at_high = policy.decide(dataclasses.replace(obs, acceptance=high)).draft_len
    assert at_low <= at_high


@pytest.mark.parametrize("params", [{"increase": 0}, {"backoff": 1.0}, {"backoff": 0.0},
                                    {"probe_every": 0}])
def test_backoff_rejects_nonsense_parameters(params):
    with pytest.raises(ValueError):
        BackoffSpeculation(**params)
