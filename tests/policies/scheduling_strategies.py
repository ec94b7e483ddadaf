"""Shared builders and Hypothesis strategies of the scheduling-policy tests
(``test_scheduling``, ``test_scheduling_lft``): device loads and observations
built by hand, random observations, and every scheduling policy configured for one."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st

from policies.scheduling import (
    DeviceLoad,
    OpEstimate,
    SchedulingObservation,
    SinglePlacement,
    StaticPlacement,
)
from policies.scheduling_policies import (
    AmdHybridScheduling,
    LeastFinishTimeScheduling,
    PaperScheduling,
)

OPS = ("prefill", "decode_attention", "decode_ffn")
NAMES = ("cpu", "igpu", "npu", "dgpu", "npu2")
SETTINGS = settings(derandomize=True, deadline=None, max_examples=200)


def dev(
    name: str, kind: str, busy_frac: float = 0.0, busy_until_s: float = 0.0, handoff_s: float = 0.0
) -> DeviceLoad:
    return DeviceLoad(
        name,
        kind,
        queue_len=0,
        busy_s=0.0,
        busy_frac=busy_frac,
        busy_until_s=busy_until_s,
        handoff_s=handoff_s,
    )


def obs_of(
    *devices: DeviceLoad, estimates: dict[tuple[str, str], float] | None = None
) -> SchedulingObservation:
    est = tuple(OpEstimate(op, d, s) for (op, d), s in (estimates or {}).items())
    return SchedulingObservation(devices, num_waiting=1, num_running=1, estimates=est)


def hx370(gpu_frac: float = 0.0, npu_frac: float = 0.0) -> SchedulingObservation:
    return obs_of(dev("cpu", "cpu"), dev("igpu", "gpu", gpu_frac), dev("npu", "npu", npu_frac))


# -- strategies ----------------------------------------------------------------------------------
seconds = st.floats(0.0, 8.0, allow_nan=False)


@st.composite
def device_loads(draw) -> tuple[DeviceLoad, ...]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    return tuple(
        DeviceLoad(
            device=name,
            kind=draw(st.sampled_from(("cpu", "gpu", "npu"))),
            queue_len=draw(st.integers(0, 8)),
            busy_s=draw(st.floats(0.0, 1e3, allow_nan=False)),
            busy_frac=draw(st.floats(0.0, 1.0)),
            busy_until_s=draw(seconds),
            handoff_s=draw(st.sampled_from((0.0, 0.001, 0.25, 1.0))),
        )
        for name in names
    )


@st.composite
def observations(draw, devices: tuple[DeviceLoad, ...] | None = None) -> SchedulingObservation:
    """1-4 devices with distinct names; an estimate for all, some or none of the (op, device)
    pairs, in a drawn order."""
    devices = devices if devices is not None else draw(device_loads())
    pairs = [(op, d.device) for op in OPS for d in devices]
    coverage = draw(st.sampled_from(("all", "some")))
    chosen = pairs if coverage == "all" else draw(st.lists(st.sampled_from(pairs), unique=True))
    estimates = tuple(OpEstimate(op, name, draw(seconds)) for op, name in chosen)
    return SchedulingObservation(
        devices,
        num_waiting=draw(st.integers(0, 64)),
        num_running=draw(st.integers(0, 64)),
        estimates=draw(st.permutations(estimates)),
    )


@st.composite
def policies_for(draw, obs: SchedulingObservation):
    """Any scheduling policy; single and static are configured with devices the observation has
    (they do not fall back: the engine rejects a bad name), the others with any names."""
    names = [d.device for d in obs.devices]
    pick = st.sampled_from(names)
    anywhere = st.sampled_from(NAMES + ("missing",))
    return draw(
        st.one_of(
            st.builds(SinglePlacement, pick),
            st.builds(StaticPlacement, pick, pick, pick),
            st.builds(PaperScheduling, anywhere, anywhere, st.floats(0.0, 1.5)),
            st.builds(AmdHybridScheduling, anywhere, anywhere),
            st.just(LeastFinishTimeScheduling()),
        )
    )


@st.composite
def obs_and_policy(draw):
    obs = draw(observations())
    return obs, draw(policies_for(obs))
