"""Conformance of a policy to its family's contract: feasible, deterministic and pure
decisions (and, for tiering, monotone in memory pressure)."""

from __future__ import annotations

import builtins
import dataclasses
import random
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from unittest import mock

from hypothesis import HealthCheck, given, settings

from policies import (
    BufferDecision,
    BufferObservation,
    Placement,
    Precision,
    SchedulingObservation,
    SpecDecision,
    SpecObservation,
    TieringDecision,
    TieringObservation,
    TierPressure,
)
from sim.testing.strategies import (
    DEVICE_NAMES,
    STRATEGIES,
    scheduling_observations,
    tiering_observations,
    unit_fractions,
)


# -- feasibility -----------------------------------------------------------------------------
def _feasible_tiering(obs: TieringObservation, d: TieringDecision) -> None:
    assert isinstance(d, TieringDecision), f"expected a TieringDecision, got {d!r}"
    assert Precision(d.new_block_precision).is_resident, (
        f"new blocks written {Precision(d.new_block_precision).name}, not a resident precision")
    present = {(b.request_id, b.index): b.precision for b in obs.blocks}
    seen = set()
    for rid, index, prec in d.changes:
        assert (rid, index) in present, f"change names block {index} of request {rid}: absent"
        assert (rid, index) not in seen, f"block {index} of request {rid} changed twice"
        seen.add((rid, index))
        assert isinstance(prec, Precision) or prec in set(Precision), f"bad precision {prec!r}"


def _feasible_buffers(obs: BufferObservation, d: BufferDecision) -> None:
    assert isinstance(d, BufferDecision), f"expected a BufferDecision, got {d!r}"
    if d.reuse:
        assert obs.current_bytes >= obs.requested_bytes or any(
            b >= obs.requested_bytes for b in obs.pool_free_bytes), (
            "reuse with no held or pooled buffer big enough")
    else:
        assert d.alloc_bytes >= obs.requested_bytes, (
            f"allocates {d.alloc_bytes} bytes for a request of {obs.requested_bytes}")


def _feasible_speculation(obs: SpecObservation, d: SpecDecision) -> None:
    assert isinstance(d, SpecDecision), f"expected a SpecDecision, got {d!r}"
    assert isinstance(d.draft_len, int), f"draft length {d.draft_len!r} is not an int"
    assert 0 <= d.draft_len <= obs.max_draft_len, (
        f"draft length {d.draft_len} outside [0, {obs.max_draft_len}]")
    assert 0.0 <= d.threshold <= 1.0, f"threshold {d.threshold} outside [0, 1]"


def _feasible_scheduling(obs: SchedulingObservation, d: Placement) -> None:
    assert isinstance(d, Placement), f"expected a Placement, got {d!r}"
    names = {x.device for x in obs.devices}
    for device in (d.prefill, d.decode_attention, d.decode_ffn):
        assert device in names, f"placement names {device!r}, not one of {sorted(names)}"


FEASIBLE: dict[str, Callable] = {"tiering": _feasible_tiering, "buffers": _feasible_buffers,
                                 "speculation": _feasible_speculation,
                                 "scheduling": _feasible_scheduling}


# -- purity ----------------------------------------------------------------------------------
class ImpureDecision(AssertionError):
    """``decide`` read a clock, drew global randomness or did I/O."""


def _forbid(name: str):
    def refuse(*_args, **_kwargs):
        raise ImpureDecision(f"decide() called {name}: decisions must not read a clock, draw "
                             "global randomness or do I/O")
    return refuse


_IMPURE = [(time, n) for n in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter",
                               "perf_counter_ns", "process_time", "sleep")]
_IMPURE += [(random, n) for n in ("random", "randint", "randrange", "choice", "shuffle",
                                  "uniform", "gauss", "sample")]
_IMPURE += [(builtins, "open"), (builtins, "input"), (socket, "socket")]


def pure_call(fn: Callable, *args):
    with ExitStack() as stack:
        for module, name in _IMPURE:
            stack.enter_context(mock.patch.object(module, name, _forbid(f"{module.__name__}."
                                                                        f"{name}")))
        return fn(*args)


# -- conformance -----------------------------------------------------------------------------
def family_of(policy) -> str:
    """The family a policy belongs to: its ``family`` class attribute or its ``decide``
    annotation, as a scenario would check it (sim/config/policy_check.py)."""
    from sim.config.policy_check import check_class
    from sim.errors import UserError
    cls = type(policy)
    try:
        family = check_class(cls, f"{cls.__module__}:{cls.__qualname__}")
    except UserError as err:
        raise TypeError(f"{policy!r} is not a policy ({err})") from None
    if family is None:
        raise TypeError(f"cannot tell the family of {policy!r} (no family class attribute, no "
                        "annotated observation): pass family=...")
    return family


def _resulting(obs: TieringObservation, d: TieringDecision) -> dict[tuple[int, int], Precision]:
    out = {(b.request_id, b.index): b.precision for b in obs.blocks}
    out.update({(r, i): Precision(p) for r, i, p in d.changes})
    return out


def check_conformance(policy, family: str | None = None, max_examples: int = 200,
                      devices: tuple[str, ...] = DEVICE_NAMES) -> None:
    """Raise ``AssertionError`` (with a shrunk counterexample) unless ``policy`` makes feasible,
    deterministic, pure decisions on every generated observation of its family; for tiering,
    also that more memory pressure never raises any block's precision.  Scheduling observations
    hold exactly ``devices``."""
    family = family or family_of(policy)
    strategy = (scheduling_observations(devices) if family == "scheduling"
                else STRATEGIES[family]())
    feasible = FEASIBLE[family]
    conf = settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

    @conf
    @given(strategy)
    def decisions_are_feasible_deterministic_and_pure(obs):
        first = pure_call(policy.decide, obs)
        feasible(obs, first)
        again = pure_call(policy.decide, dataclasses.replace(obs))
        assert again == first, f"two equal observations gave {first!r} and {again!r}"

    decisions_are_feasible_deterministic_and_pure()
    if family == "tiering":
        _check_pressure_monotone(policy, conf)


def _check_pressure_monotone(policy, conf) -> None:
    @conf
    @given(tiering_observations(pressure=0.0), unit_fractions, unit_fractions)
    def more_pressure_never_raises_precision(obs, low, high):
        low, high = sorted((low, high))
        at = [dataclasses.replace(obs, pressures=(
            TierPressure("device", int(p * 10**6), 10**6), *obs.pressures[1:]))
              for p in (low, high)]
        relaxed = _resulting(at[0], pure_call(policy.decide, at[0]))
        pressed = _resulting(at[1], pure_call(policy.decide, at[1]))
        for key, prec in pressed.items():
            assert prec >= relaxed[key], (
                f"block {key[1]} of request {key[0]}: {relaxed[key].name} at pressure {low:.3f} "
                f"but {prec.name} at {high:.3f}: more pressure raised its precision")

    more_pressure_never_raises_precision()


