"""Every question the engine asks a policy goes through ``ask``: an exception inside ``decide``,
or an answer of the wrong type, becomes a ``PolicyFailure`` naming the family and the policy
(the engine adds the step and ends the run; sim/engine/engine.py)."""

from __future__ import annotations

from typing import Any

from sim.config.policy_check import DECISION
from sim.errors import InfeasibleDecision, PolicyRaised


def ask(policy: Any, family: str, obs: Any) -> Any:
    """``policy.decide(obs)``, checked to be a decision of ``family``."""
    try:
        decision = policy.decide(obs)
    except Exception as err:  # noqa: BLE001 - any bug in a policy ends the run the same way
        lines = str(err).strip().splitlines()
        detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        raise PolicyRaised(f"{family} policy {policy.kind!r} raised {detail}") from err
    expected = DECISION[family]
    if not isinstance(decision, expected):
        raise InfeasibleDecision(f"{family} policy {policy.kind!r} returned "
                                 f"{type(decision).__name__}, not a {expected.__name__}")
    return decision
