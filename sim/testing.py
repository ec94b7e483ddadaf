"""A kit for property-testing inference policies, ours and users', with Hypothesis.

- Strategies for every observation type (``tiering_observations()``, ``buffer_observations()``,
  ``spec_observations()``, ``scheduling_observations()``).
- ``check_conformance(policy)``: runs any policy of a family through generated observations and
  checks that its decisions are feasible, deterministic for equal observations, made without a
  clock, randomness or I/O, and (tiering) never raise precision when memory pressure rises.
  A violation raises ``AssertionError`` with Hypothesis's shrunk counterexample.
- ``check_in_simulator(policy)``: drives the policy through the simulator on generated workloads and
  checks the engine's invariants: no request lost, the KV budget never exceeded, tokens conserved.

It lives in ``sim`` because ``policies`` stays standard-library only; policies need not import it.
"""

from __future__ import annotations

import builtins
import dataclasses
import random
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    BlockInfo,
    BufferDecision,
    BufferObservation,
    DeviceLoad,
    OpEstimate,
    Placement,
    Precision,
    SchedulingObservation,
    SpecDecision,
    SpecObservation,
    TieringDecision,
    TieringObservation,
    TierPressure,
)

FAMILY_OF_OBSERVATION = {"tiering": TieringObservation, "buffers": BufferObservation,
                         "speculation": SpecObservation, "scheduling": SchedulingObservation}

# -- strategies ------------------------------------------------------------------------------
_fractions = st.floats(0.0, 1.0, allow_nan=False)
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
                                 n - 1 - i, draw(_fractions), draw(st.booleans())))
    return tuple(out)


@st.composite
def tiering_observations(draw, pressure: float | None = None) -> TieringObservation:
    capacity = draw(st.integers(1, 10**9))
    frac = draw(_fractions) if pressure is None else pressure
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
    history = tuple(draw(st.lists(_fractions, max_size=32)))
    max_k = draw(st.integers(0, 16))
    return SpecObservation(draw(_fractions), history, draw(st.integers(0, max_k)),
                           draw(st.booleans()), draw(_seconds), draw(_seconds), max_k,
                           draw(st.integers(1, 64)), draw(st.integers(0, 1000)),
                           draw(_seconds))


DEVICE_NAMES = ("cpu", "gpu", "igpu", "npu")


@st.composite
def scheduling_observations(draw, devices: tuple[str, ...] = DEVICE_NAMES) -> SchedulingObservation:
    """Every named device is present (in a drawn order); kinds follow the names."""
    names = draw(st.permutations(devices))
    kinds = {n: "npu" if "npu" in n else "cpu" if "cpu" in n else "gpu" for n in names}
    loads = tuple(DeviceLoad(n, kinds[n], draw(st.integers(0, 8)), draw(st.floats(0, 100)),
                             draw(_fractions), draw(_seconds), draw(st.floats(0, 1e-3)))
                  for n in names)
    estimates = tuple(OpEstimate(op, n, draw(st.floats(1e-6, 1.0)))
                      for op in ("prefill", "decode_attention", "decode_ffn") for n in names
                      if draw(st.booleans()))
    return SchedulingObservation(loads, draw(st.integers(0, 100)), draw(st.integers(0, 64)),
                                 estimates)


STRATEGIES: dict[str, Callable] = {"tiering": tiering_observations, "buffers": buffer_observations,
              "speculation": spec_observations, "scheduling": scheduling_observations}


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
    """The family a policy belongs to, from its ``decide`` annotation or its kind's registry."""
    from sim.policy_registry import FAMILIES
    for family, classes in FAMILIES.items():
        if isinstance(policy, classes):
            return family
    hints = getattr(type(policy).decide, "__annotations__", {})
    for family, obs_type in FAMILY_OF_OBSERVATION.items():
        if hints.get("obs") in (obs_type, obs_type.__name__):
            return family
    raise TypeError(f"cannot tell the family of {policy!r}: pass family=...")


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
    @given(tiering_observations(pressure=0.0), _fractions, _fractions)
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


# -- system-level property -------------------------------------------------------------------
SYSTEM_SCENARIO = Path(__file__).parent / "testing_scenario.yaml"


@st.composite
def workloads(draw, max_requests: int = 12) -> list[tuple[float, int, int]]:
    """(arrival_s, prompt_tokens, output_tokens) rows."""
    n = draw(st.integers(1, max_requests))
    return [(draw(st.floats(0.0, 2.0)), draw(st.integers(1, 600)), draw(st.integers(1, 200)))
            for _ in range(n)]


def check_in_simulator(policy, family: str | None = None, max_examples: int = 25,
                       scenario: Path = SYSTEM_SCENARIO, tmp_dir: Path | None = None) -> None:
    """Drive ``policy`` (the other families at their baselines) through the simulator on
    generated workloads, KV budgets and batch limits; assert that no request is lost (each ends
    completed with all its tokens, or failed with a reason), the KV budget is never exceeded and
    the store's books balance."""
    import tempfile

    from sim.config import resolve_runs
    from sim.runner import run_scenario

    family = family or family_of(policy)
    base = Path(tmp_dir or tempfile.mkdtemp(prefix="infer-os-kit-"))

    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(workloads(), st.integers(8, 64), st.integers(1, 8))
    def engine_invariants_hold(rows, budget_blocks, max_batch):
        trace = base / "trace.csv"
        trace.write_text("arrival_s,prompt_tokens,output_tokens\n" +
                         "".join(f"{a},{p},{o}\n" for a, p, o in rows))
        budget = budget_blocks * 16 * 36 * 1024  # blocks of 16 tokens of a 36 KiB/token model
        sets = [f"workload.arrival={{kind: trace, path: {trace}}}",
                f"engine.kv_budget_bytes={budget}", f"engine.max_batch={max_batch}"]
        ((variant, scn),) = resolve_runs(scenario, sets)
        policies = scn.policies.model_copy(update={family: policy})
        scn = scn.model_copy(update={"policies": policies})
        out = run_scenario(scn, variant, "roofline", scenario.parent)
        _assert_invariants(out, rows)

    engine_invariants_hold()


def _assert_invariants(out, rows) -> None:
    from sim.engine_state import COMPLETED, FAILED

    state, store = out.state, out.store
    n = len(rows)
    assert out.metrics["num_completed"] + out.metrics["num_failed"] == n, "a request was lost"
    for rid in range(n):
        status = int(state.status[rid])
        assert status in (COMPLETED, FAILED), f"request {rid} never ended"
        if status == COMPLETED:
            want = int(out.requests.output_tokens[rid])
            assert state.generated[rid] == want, (
                f"request {rid}: {state.generated[rid]} tokens generated, {want} asked")
        else:
            assert state.fail_reason.get(rid), f"request {rid} failed without a reason"
    assert state.kv_peak_bytes <= store.device_budget_bytes, "the KV budget was exceeded"
    assert store.request_ids() == [], "KV blocks left behind after every request ended"
    store.check_integrity()
