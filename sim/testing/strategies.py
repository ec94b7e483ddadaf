"""Hypothesis strategies for every policy family's observations."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from policies import (
    BlockInfo,
    BufferObservation,
    DeviceLoad,
    OpEstimate,
    Precision,
    SchedulingObservation,
    SpecObservation,
    TieringObservation,
    TierPressure,
)
from sim.config.policy_check import OBSERVATION

FAMILY_OF_OBSERVATION = OBSERVATION  # family -> its observation type


# -- strategies ------------------------------------------------------------------------------
unit_fractions = st.floats(0.0, 1.0, allow_nan=False)
_seconds = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def block_lists(draw, max_requests: int = 4, max_blocks: int = 12) -> tuple[BlockInfo, ...]:
    out = []
    for rid in range(draw(st.integers(0, max_requests))):
        n = draw(st.integers(1, max_blocks))
        for i in range(n):
            age = draw(st.integers(0, 2000))
            prec = draw(st.sampled_from(list(Precision)))
            out.append(BlockInfo(rid, i, prec, age, draw(st.floats(0.0, 200.0)),
                                 draw(st.integers(0, age)), draw(st.floats(-1.0, 1.0)),
                                 n - 1 - i, draw(unit_fractions), draw(st.booleans())))
    return tuple(out)


@st.composite
def tiering_observations(draw, pressure: float | None = None) -> TieringObservation:
    capacity = draw(st.integers(1, 10**9))
    frac = draw(unit_fractions) if pressure is None else pressure
    return TieringObservation(
        draw(block_lists()),
        (TierPressure("device", int(frac * capacity), capacity),
         TierPressure("host", draw(st.integers(0, 10**9)), 10**9)),
        draw(st.sampled_from([1, 4, 16, 32])), draw(st.floats(0.0, 3.0)),
        draw(st.integers(0, 10**6)))


@st.composite
def buffer_observations(draw) -> BufferObservation:
    sizes = st.integers(0, 2**30)
    return BufferObservation(draw(st.sampled_from(["logits", "hidden", "kv"])),
                             draw(st.integers(1, 2**30)), draw(sizes),
                             tuple(draw(st.lists(sizes, max_size=16))),
                             tuple(draw(st.lists(sizes, max_size=8))))


@st.composite
def spec_observations(draw) -> SpecObservation:
    history = tuple(draw(st.lists(unit_fractions, max_size=32)))
    max_k = draw(st.integers(0, 16))
    return SpecObservation(draw(unit_fractions), history, draw(st.integers(0, max_k)),
                           draw(st.booleans()), draw(_seconds), draw(_seconds), max_k,
                           draw(st.integers(1, 64)), draw(st.integers(0, 1000)),
                           draw(_seconds), tuple(draw(st.lists(st.one_of(st.none(), _seconds),
                                                               max_size=max_k))))


DEVICE_NAMES = ("cpu", "gpu", "igpu", "npu")


@st.composite
def scheduling_observations(draw, devices: tuple[str, ...] = DEVICE_NAMES) -> SchedulingObservation:
    """Every named device is present (in a drawn order); kinds follow the names."""
    names = draw(st.permutations(devices))
    kinds = {n: "npu" if "npu" in n else "cpu" if "cpu" in n else "gpu" for n in names}
    loads = tuple(DeviceLoad(n, kinds[n], draw(st.integers(0, 8)), draw(st.floats(0, 100)),
                             draw(unit_fractions), draw(_seconds), draw(st.floats(0, 1e-3)))
                  for n in names)
    estimates = tuple(OpEstimate(op, n, draw(st.floats(1e-6, 1.0)))
                      for op in ("prefill", "decode_attention", "decode_ffn") for n in names
                      if draw(st.booleans()))
    return SchedulingObservation(loads, draw(st.integers(0, 100)), draw(st.integers(0, 64)),
                                 estimates)


STRATEGIES: dict[str, Callable] = {"tiering": tiering_observations, "buffers": buffer_observations,
              "speculation": spec_observations, "scheduling": scheduling_observations}


