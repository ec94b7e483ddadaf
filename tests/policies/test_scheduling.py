"""Scheduling policies: hand-built placements for the paper's pipeline, AMD's hybrid flow and
least finish time, and Hypothesis properties every scheduling policy must keep (only devices
that exist, determinism, fixed placements that ignore load, minimal predicted finish).

Busy fractions and times in the hand-built cases are sums of powers of two, exact in binary
floating point, so thresholds are hit exactly."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.scheduling import (
    Placement,
    SchedulingObservation,
)
from policies.scheduling_policies import (
    AmdHybridScheduling,
    LeastFinishTimeScheduling,
    PaperScheduling,
)
from tests.policies.scheduling_strategies import (
    SETTINGS,
    dev,
    hx370,
    obs_and_policy,
    obs_of,
    observations,
    seconds,
)


# -- properties of every scheduling policy -------------------------------------------------------
@SETTINGS
@given(obs_and_policy())
def test_placement_names_only_devices_in_the_observation(case):
    obs, policy = case
    placement = policy.decide(obs)
    assert isinstance(placement, Placement)
    assert placement.devices <= {d.device for d in obs.devices}


@SETTINGS
@given(obs_and_policy(), st.data())
def test_decide_is_deterministic_and_ignores_estimate_order(case, data):
    obs, policy = case
    shuffled = dataclasses.replace(obs, estimates=data.draw(st.permutations(obs.estimates)))
    first = policy.decide(obs)
    assert policy.decide(obs) == first
    assert policy.decide(dataclasses.replace(obs)) == first  # an equal, separate observation
    assert policy.decide(shuffled) == first  # distinct (op, device) pairs: order cannot matter


@SETTINGS
@given(obs_and_policy(), st.data())
def test_a_policy_that_does_not_observe_load_ignores_it(case, data):
    # observes_load False lets the engine decide once per run: only the device list may matter
    obs, policy = case
    if policy.observes_load:
        return
    reloaded = tuple(
        dataclasses.replace(
            d, busy_frac=data.draw(st.floats(0.0, 1.0)), busy_until_s=data.draw(seconds)
        )
        for d in obs.devices
    )
    other = data.draw(observations(devices=reloaded))
    assert policy.decide(other) == policy.decide(obs)


@pytest.mark.parametrize(
    "policy", [PaperScheduling(), AmdHybridScheduling(), LeastFinishTimeScheduling()]
)
def test_an_observation_without_devices_is_refused(policy):
    with pytest.raises(ValueError, match="at least one device"):
        policy.decide(SchedulingObservation((), num_waiting=0, num_running=0))


@pytest.mark.parametrize(
    ("cls", "kind", "params", "observes_load"),
    [
        (PaperScheduling, "paper", {"gpu", "npu", "imbalance"}, True),
        (AmdHybridScheduling, "amd-hybrid", {"gpu", "npu"}, False),
        (LeastFinishTimeScheduling, "least-finish-time", set(), True),
    ],
)
def test_kind_parameters_and_load_flag(cls, kind, params, observes_load):
    # the config registry builds policies from their dataclass fields: observes_load is none
    assert {f.name for f in dataclasses.fields(cls)} == params | {"kind"}
    assert cls().kind == kind
    assert cls.observes_load is observes_load
    with pytest.raises(dataclasses.FrozenInstanceError):
        cls().kind = "other"


# -- the paper's pipeline ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("gpu_frac", "npu_frac", "imbalance", "expected"),
    [
        (0.25, 0.25, 0.25, ("igpu", "igpu", "npu")),  # balanced: the paper's mapping
        (0.0, 0.25, 0.25, ("igpu", "igpu", "npu")),  # NPU busier by exactly the threshold: stays
        (0.0, 0.5, 0.25, ("igpu", "igpu", "igpu")),  # NPU busier by more: FFN to the GPU
        (0.25, 0.0, 0.25, ("igpu", "igpu", "npu")),  # GPU busier by exactly the threshold: stays
        (0.5, 0.0, 0.25, ("npu", "igpu", "npu")),  # GPU busier by more: prefill to the NPU
        (0.5, 0.25, 0.25, ("igpu", "igpu", "npu")),
        (0.5, 0.25 - 2**-20, 0.25, ("npu", "igpu", "npu")),  # just past the threshold
        (0.25 - 2**-20, 0.5, 0.25, ("igpu", "igpu", "igpu")),
        (1.0, 0.0, 1.0, ("igpu", "igpu", "npu")),  # imbalance 1 never moves
        (0.5, 0.5, 0.0, ("igpu", "igpu", "npu")),  # imbalance 0: equal load still stays
        (0.5, 0.5 + 2**-20, 0.0, ("igpu", "igpu", "igpu")),
    ],
)
def test_paper_rebalances_exactly_past_its_threshold(gpu_frac, npu_frac, imbalance, expected):
    policy = PaperScheduling(imbalance=imbalance)
    assert policy.decide(hx370(gpu_frac, npu_frac)) == Placement(*expected)


def test_paper_default_threshold_is_0_3():
    assert PaperScheduling().decide(hx370(0.0, 0.25)) == Placement("igpu", "igpu", "npu")
    assert PaperScheduling().decide(hx370(0.0, 0.375)) == Placement("igpu", "igpu", "igpu")
    assert PaperScheduling().decide(hx370(0.375, 0.0)) == Placement("npu", "igpu", "npu")


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        # configured names missing: the first device of the wanted kind
        ((dev("cpu", "cpu"), dev("gpu0", "gpu"), dev("xdna", "npu")), ("gpu0", "gpu0", "xdna")),
        # no NPU at all: its work stays on the GPU, not the first-listed CPU
        ((dev("cpu", "cpu"), dev("h200", "gpu")), ("h200", "h200", "h200")),
        # neither kind: the first device
        ((dev("cpu0", "cpu"), dev("cpu1", "cpu")), ("cpu0", "cpu0", "cpu0")),
        # a configured name wins over an earlier device of the same kind
        ((dev("npu2", "npu"), dev("igpu", "gpu"), dev("npu", "npu")), ("igpu", "igpu", "npu")),
    ],
)
def test_paper_falls_back_to_devices_that_exist(devices, expected):
    assert PaperScheduling().decide(obs_of(*devices)) == Placement(*expected)


@pytest.mark.parametrize("imbalance", [-0.125, float("nan")])
def test_paper_refuses_a_bad_imbalance(imbalance):
    with pytest.raises(ValueError, match="imbalance"):
        PaperScheduling(imbalance=imbalance)


@SETTINGS
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_paper_moves_one_way_at_most_and_more_load_never_moves_work_back(
    gpu_frac, npu_frac, gap, extra_frac
):
    policy = PaperScheduling(imbalance=gap)
    placement = policy.decide(hx370(gpu_frac, npu_frac))
    assert placement.decode_attention == "igpu"
    assert (placement.prefill, placement.decode_ffn) != ("npu", "igpu")
    busier_npu = policy.decide(hx370(gpu_frac, min(1.0, npu_frac + extra_frac)))
    busier_gpu = policy.decide(hx370(min(1.0, gpu_frac + extra_frac), npu_frac))
    if placement.decode_ffn == "igpu":
        assert busier_npu.decode_ffn == "igpu"
    if placement.prefill == "npu":
        assert busier_gpu.prefill == "npu"


# -- AMD's hybrid flow ---------------------------------------------------------------------------
def test_amd_hybrid_prefills_on_the_npu_and_decodes_on_the_gpu():
    assert AmdHybridScheduling().decide(hx370(1.0, 0.0)) == Placement("npu", "igpu", "igpu")
    amd = AmdHybridScheduling(gpu="gpu0", npu="xdna")
    devices = (dev("xdna", "npu"), dev("gpu0", "gpu"))
    assert amd.decide(obs_of(*devices)) == Placement("xdna", "gpu0", "gpu0")
    assert AmdHybridScheduling().decide(obs_of(dev("h200", "gpu"))) == Placement(
        "h200", "h200", "h200"
    )


@SETTINGS
@given(observations())
def test_amd_hybrid_prefills_on_the_npu_whenever_there_is_one(obs):
    placement = AmdHybridScheduling().decide(obs)
    npus = [d.device for d in obs.devices if d.kind == "npu"]
    names = [d.device for d in obs.devices]
    expected = "npu" if "npu" in names else (npus[0] if npus else placement.decode_attention)
    assert placement.prefill == expected
    assert placement.decode_ffn == placement.decode_attention
