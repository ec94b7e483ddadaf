"""The least-finish-time scheduling policy: hand-computed placements from live device load.
Shared builders and strategies come from ``scheduling_strategies``."""

from __future__ import annotations

import pytest
from hypothesis import given

from policies.scheduling import Placement, SchedulingObservation
from policies.scheduling_policies import LeastFinishTimeScheduling
from tests.policies.scheduling_strategies import SETTINGS, dev, obs_of, observations

# -- least finish time ---------------------------------------------------------------------------
IGPU, NPU, CPU = "igpu", "npu", "cpu"


@pytest.mark.parametrize(
    ("devices", "estimates", "expected"),
    [
        # idle devices: the fastest for each op
        (
            (dev(CPU, "cpu"), dev(IGPU, "gpu"), dev(NPU, "npu")),
            {
                ("prefill", CPU): 4.0,
                ("prefill", IGPU): 1.0,
                ("prefill", NPU): 0.5,
                ("decode_attention", IGPU): 0.25,
                ("decode_attention", NPU): 0.5,
                ("decode_ffn", IGPU): 0.5,
                ("decode_ffn", NPU): 0.25,
            },
            (NPU, IGPU, NPU),
        ),
        # the NPU is faster at prefill but busy for 1 s: 1 + 0.5 > 0 + 1.25
        (
            (dev(IGPU, "gpu"), dev(NPU, "npu", busy_until_s=1.0)),
            {("prefill", IGPU): 1.25, ("prefill", NPU): 0.5},
            (IGPU, IGPU, IGPU),
        ),
        # a tie (1 + 0.5 = 0 + 1.5) goes to the device listed first, either way round
        (
            (dev(IGPU, "gpu"), dev(NPU, "npu", busy_until_s=1.0)),
            {("prefill", IGPU): 1.5, ("prefill", NPU): 0.5},
            (IGPU, IGPU, IGPU),
        ),
        (
            (dev(NPU, "npu", busy_until_s=1.0), dev(IGPU, "gpu")),
            {("prefill", IGPU): 1.5, ("prefill", NPU): 0.5},
            (NPU, NPU, NPU),
        ),
        # the FFN pays the NPU's handoff: 0.25 + 0.125 > 0.3125 on the GPU
        (
            (dev(IGPU, "gpu"), dev(NPU, "npu", handoff_s=0.125)),
            {
                ("decode_attention", IGPU): 0.25,
                ("decode_ffn", IGPU): 0.3125,
                ("decode_ffn", NPU): 0.25,
            },
            (IGPU, IGPU, IGPU),
        ),
        # a cheap handoff is worth it: 0.25 + 0.03125 < 0.3125
        (
            (dev(IGPU, "gpu"), dev(NPU, "npu", handoff_s=0.03125)),
            {
                ("decode_attention", IGPU): 0.25,
                ("decode_ffn", IGPU): 0.3125,
                ("decode_ffn", NPU): 0.25,
            },
            (IGPU, IGPU, NPU),
        ),
        # the attention's device is busy for 2 s, so the FFN waits for it anywhere: the idle NPU's
        # 2 + 0.25 loses to staying on the GPU at 2 + 0.1875
        (
            (dev(IGPU, "gpu", busy_until_s=2.0), dev(NPU, "npu")),
            {
                ("decode_attention", IGPU): 0.5,
                ("decode_attention", NPU): 4.0,
                ("decode_ffn", IGPU): 0.1875,
                ("decode_ffn", NPU): 0.25,
            },
            (IGPU, IGPU, IGPU),
        ),
        # devices without an estimate are skipped: the CPU is free and listed first
        (
            (dev(CPU, "cpu"), dev(IGPU, "gpu", busy_until_s=8.0)),
            {("prefill", IGPU): 1.0, ("decode_attention", IGPU): 1.0, ("decode_ffn", IGPU): 1.0},
            (IGPU, IGPU, IGPU),
        ),
        # no estimate for an op: prefill and attention to the first device, FFN to the attention's
        (
            (dev(CPU, "cpu"), dev(IGPU, "gpu"), dev(NPU, "npu")),
            {("decode_attention", NPU): 1.0},
            (CPU, NPU, NPU),
        ),
        ((dev(CPU, "cpu"), dev(IGPU, "gpu")), {}, (CPU, CPU, CPU)),
        # a non-finite estimate counts as none
        (
            (dev(IGPU, "gpu"), dev(NPU, "npu")),
            {("prefill", IGPU): float("inf"), ("prefill", NPU): 8.0},
            (NPU, IGPU, IGPU),
        ),
        (
            (dev(IGPU, "gpu"), dev(NPU, "npu")),
            {("prefill", NPU): float("inf"), ("decode_attention", NPU): float("nan")},
            (IGPU, IGPU, IGPU),
        ),
    ],
)
def test_least_finish_time_hand_built(devices, estimates, expected):
    placement = LeastFinishTimeScheduling().decide(obs_of(*devices, estimates=estimates))
    assert placement == Placement(*expected)


def _minimal_finishers(obs: SchedulingObservation, op: str, ready) -> list[str]:
    """Brute force: every device whose finish is the least of all (not the policy's loop)."""
    finish = {
        d.device: ready(d) + obs.estimate(op, d.device)
        for d in obs.devices
        if obs.estimate(op, d.device) is not None
    }
    return [name for name, s in finish.items() if s == min(finish.values())]


@SETTINGS
@given(observations())
def test_least_finish_time_picks_a_minimal_finish_and_the_first_on_a_tie(obs):
    placement = LeastFinishTimeScheduling().decide(obs)
    names = [d.device for d in obs.devices]
    by_name = {d.device: d for d in obs.devices}
    attention = by_name[placement.decode_attention]

    def ffn_ready(d):
        return max(attention.busy_until_s, d.busy_until_s) + (
            0.0 if d is attention else d.handoff_s
        )

    for op, chosen, ready, default in [
        ("prefill", placement.prefill, lambda d: d.busy_until_s, names[0]),
        ("decode_attention", placement.decode_attention, lambda d: d.busy_until_s, names[0]),
        ("decode_ffn", placement.decode_ffn, ffn_ready, attention.device),
    ]:
        best = _minimal_finishers(obs, op, ready)
        assert chosen == (best[0] if best else default), op
        if best:  # no device finishes strictly earlier than the chosen one
            chosen_s = ready(by_name[chosen]) + obs.estimate(op, chosen)
            assert all(
                ready(d) + s >= chosen_s
                for d in obs.devices
                if (s := obs.estimate(op, d.device)) is not None
            )
