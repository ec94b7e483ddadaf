"""The policy-testing kit (sim.testing) on a user's policy (tests/plugin_policies.py), and on
planted bugs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from policies import SpecDecision, SpecObservation
from sim.testing import check_conformance, check_in_simulator
from tests.plugin_policies import BrokenTiering, KeepOldest


def test_a_users_policy_passes_the_kit():
    policy = KeepOldest(keep=2)
    check_conformance(policy)
    check_in_simulator(policy, max_examples=10)


def test_the_kit_catches_precision_raised_under_pressure_with_a_shrunk_example():
    with pytest.raises(AssertionError) as err:
        check_conformance(BrokenTiering())
    text = str(err.value) + "".join(str(n) for n in getattr(err.value, "__notes__", []))
    assert "more pressure raised its precision" in text
    # Hypothesis shrinks to the smallest failing case: a single block
    assert ("Failing test case" in text or "Falsifying example" in text)
    assert text.count("BlockInfo(") == 1


@dataclass(frozen=True, slots=True)
class GreedyDrafter:
    """Planted bug: ignores the engine's limit on k."""

    kind: Literal["greedy"] = "greedy"

    def decide(self, obs: SpecObservation) -> SpecDecision:
        return SpecDecision(draft_len=obs.max_draft_len + 1)


def test_the_kit_catches_a_draft_length_over_the_maximum():
    with pytest.raises(AssertionError, match=r"draft length \d+ outside \[0, \d+\]"):
        check_conformance(GreedyDrafter(), family="speculation")


@dataclass(frozen=True, slots=True)
class ClockReader:
    kind: Literal["clock"] = "clock"

    def decide(self, obs: SpecObservation) -> SpecDecision:
        import time
        return SpecDecision(draft_len=int(time.time()) % (obs.max_draft_len + 1))


def test_the_kit_catches_a_policy_that_reads_the_clock():
    with pytest.raises(AssertionError, match="must not read a clock"):
        check_conformance(ClockReader(), family="speculation")
