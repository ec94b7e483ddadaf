"""Injected faults made real in the torch executor, on a tiny random Llama: a slowed device sleeps
(factor - 1) x each step's work, an allocation cap on the KV arenas fails the requests whose
arena cannot grow (the others run on, their greedy output untouched), a step error fails its
step's requests, and failing the executor's only device fails every request with the reason."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from sim.config.scenario import resolve_runs  # noqa: E402
from sim.engine.state import COMPLETED, FAILED, PENDING  # noqa: E402
from sim.run.runner import run_scenario  # noqa: E402


@pytest.fixture(scope="module")
def target(tmp_path_factory, write_llama) -> Path:
    return write_llama(tmp_path_factory.mktemp("models") / "target")


def measure(tmp_path: Path, write_scenario, target: Path, faults=None, **extra):
    path = write_scenario(tmp_path, target, "torch-faults",
                          policies__buffers={"kind": "exact"},
                          **({"faults": {"events": faults}} if faults else {}), **extra)
    [(variant, scn)] = resolve_runs(path, [])
    return run_scenario(scn, variant, None, path.parent, backend="torch", record_trace=True)


def outputs(out) -> dict[int, list[int]]:
    ex = out.executor
    return {rid: ex.finished[rid][:len(ex.prompts[rid]) + int(out.requests.output_tokens[rid])]
            for rid in np.flatnonzero(out.state.status == COMPLETED).tolist()}


def assert_every_request_ended(out) -> None:
    m, s = out.metrics, out.state
    assert m["num_completed"] + m["num_failed"] == m["num_requests"]
    assert not (s.status == PENDING).any()
    assert set(s.fail_reason) == set(np.flatnonzero(s.status == FAILED).tolist())


@pytest.fixture(scope="module")
def plain(tmp_path_factory, write_scenario, target):
    return measure(tmp_path_factory.mktemp("plain"), write_scenario, target)


def test_a_slowed_device_sleeps_factor_minus_one_times_each_steps_work(tmp_path, write_scenario,
                                                                      target, plain):
    out = measure(tmp_path, write_scenario, target,
                  {"hot": {"kind": "slow", "device": "cpu", "factor": 3}})
    assert out.metrics["num_completed"] == 5
    assert outputs(out) == outputs(plain)  # slower, not different
    # a step's segments are in order and its "slow" one closes it, having slept at least
    # (3 - 1) x the work measured before it
    work_s, num_slow, slept_s, worked_s = 0.0, 0, 0.0, 0.0
    for _device, op, _start, seconds, _ids in out.state.trace:
        if op == "slow":
            assert seconds >= 2 * work_s * (1 - 1e-6)
            num_slow += 1
            slept_s += seconds
            work_s = 0.0
        else:
            work_s += seconds
            worked_s += seconds
    assert num_slow == sum(out.state.num_steps.values()) > 0
    assert slept_s >= 2 * worked_s * (1 - 1e-6)
    assert "slow" not in {op for _d, op, _t, _s, _i in plain.state.trace}


def test_an_allocation_cap_fails_the_requests_whose_arena_cannot_grow(tmp_path, write_scenario,
                                                                      target, plain):
    out = measure(tmp_path, write_scenario, target,
                  {"oom": {"kind": "alloc-cap", "cap_bytes": 120_000}})
    assert_every_request_ended(out)
    assert out.error is None
    m = out.metrics
    assert m["num_failed"] >= 1 and m["num_completed"] >= 1
    assert m["faults"]["num_failed_steps"] >= 1
    pattern = re.compile(r"KV allocation of (\d+) bytes failed: (\d+) of the 120000-byte "
                         r"allocation cap in use \(injected fault\)")
    for reason in out.state.fail_reason.values():
        need, held = map(int, pattern.fullmatch(reason).groups())
        assert need + held > 120_000
    # the others ran on untouched: the same greedy tokens as without the cap
    survivors = outputs(out)
    assert survivors == {rid: toks for rid, toks in outputs(plain).items() if rid in survivors}


def test_a_step_error_fails_its_requests_and_the_rest_run_on(tmp_path, write_scenario, target,
                                                            plain):
    out = measure(tmp_path, write_scenario, target,
                  {"crash": {"kind": "step-error", "at_step": 3}})
    assert_every_request_ended(out)
    assert set(out.state.fail_reason.values()) == {
        "executor error at engine step 3 (decode; injected fault 'crash')"}
    survivors = outputs(out)
    assert survivors and survivors == {rid: t for rid, t in outputs(plain).items()
                                       if rid in survivors}


def test_failing_the_executors_only_device_fails_every_request(tmp_path, write_scenario, target):
    out = measure(tmp_path, write_scenario, target,
                  {"dies": {"kind": "device-failure", "device": "cpu", "start_s": 0.0}})
    assert out.metrics["num_failed"] == 5
    assert set(out.state.fail_reason.values()) == {
        "every device has failed: device cpu failed at t = 0 s (fault 'dies')"}
