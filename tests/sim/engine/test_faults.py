"""Injected faults (a scenario's ``faults:`` block): a slowed device, a device failure, a KV budget
that shrinks, an allocation cap and a step that raises.  Hand-computed SimPy timelines on the toy
profile of conftest.py (``coefficient`` model: a decode step is 0.125 s, a prefill is prompt
tokens / 1024 s; a 16-token block is 4096 bytes), then the invariant every fault keeps: each
request ends completed or failed with a reason, and the KV store's books balance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import simpy
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import scenarios
from sim.cli import main
from sim.config.scenario import resolve_runs
from sim.costs.bus import SharedBus
from sim.engine.state import COMPLETED, FAILED, PENDING
from sim.errors import UserError
from sim.run.runner import check_scenario, run_scenario

HYBRID = {"kind": "amd-hybrid", "gpu": "gpu", "npu": "cpu"}  # prefill on cpu, decode on gpu
BLOCK = 4096


def with_faults(path: Path, events) -> Path:
    doc = yaml.safe_load(path.read_text())
    doc["faults"] = {"events": events}
    path.write_text(yaml.safe_dump(doc))
    return path


def reasons(out) -> dict[int, str]:
    return dict(sorted(out.state.fail_reason.items()))


def assert_every_request_ended(out) -> None:
    m, s = out.metrics, out.state
    assert m["num_completed"] + m["num_failed"] == m["num_requests"] == len(s.status)
    assert not (s.status == PENDING).any()
    assert set(s.fail_reason) == set(np.flatnonzero(s.status == FAILED).tolist())
    assert all(s.fail_reason.values())
    out.store.check_integrity()
    assert out.store.request_ids() == []


# -- the schema ------------------------------------------------------------------------------------
@pytest.mark.parametrize("event, field, message", [
    ({"kind": "slow", "device": "gpu", "factor": 0.5}, "faults.events.x.factor",
     "greater than or equal to 1"),
    ({"kind": "slow", "device": "gpu", "factor": float("inf")}, "faults.events.x.factor",
     "finite"),
    ({"kind": "slow", "device": "gpu", "factor": 2, "start_s": 5, "end_s": 5},
     "faults.events.x.slow", "end_s must be after start_s"),
    ({"kind": "device-failure", "device": "gpu", "start_s": float("nan")},
     "faults.events.x.start_s", "finite"),
    ({"kind": "kv-shrink", "start_s": 1}, "faults.events.x.kv-shrink",
     "exactly one of budget_frac and budget_bytes"),
    ({"kind": "kv-shrink", "budget_frac": 1.5}, "faults.events.x.budget_frac",
     "less than or equal to 1"),
    ({"kind": "step-error", "at_step": 0}, "faults.events.x.at_step",
     "greater than or equal to 1"),
    ({"kind": "meteor", "start_s": 1}, "faults.events.x", "does not match any of the expected"),
])
def test_a_bad_fault_event_is_a_user_error_naming_its_field(tmp_path, toy_scenario, event, field,
                                                             message):
    path = with_faults(toy_scenario(tmp_path), {"x": event})
    with pytest.raises(UserError) as err:
        resolve_runs(path, [])
    assert err.value.field == field
    assert message in err.value.message


def test_a_list_of_events_is_named_by_position_and_a_named_event_takes_dotted_overrides(
        tmp_path, toy_scenario):
    path = with_faults(toy_scenario(tmp_path), [{"kind": "step-error", "at_step": 3}])
    [(_, scn)] = resolve_runs(path, [])
    assert list(scn.faults.events) == ["0"]
    path = with_faults(path, {"hot": {"kind": "slow", "device": "cpu", "factor": 2}})
    [(_, scn)] = resolve_runs(path, ["faults.events.hot.factor=3"])  # as a sweep axis would
    assert scn.faults.events["hot"].factor == 3


def test_a_fault_on_a_device_the_hardware_lacks_is_exit_2_in_one_line(tmp_path, toy_scenario,
                                                                      capsys):
    path = with_faults(toy_scenario(tmp_path),
                       {"dies": {"kind": "device-failure", "device": "npu", "start_s": 1}})
    [(_, scn)] = resolve_runs(path, [])
    with pytest.raises(UserError) as err:
        check_scenario(scn, path.parent)
    assert err.value.field == "faults.events.dies.device"
    assert main(["simulate", str(path)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1
    assert "faults.events.dies.device: unknown device 'npu' on toy (devices: cpu, gpu)" in \
        err_lines[0]


def test_no_faults_and_an_empty_faults_block_run_alike_without_a_faults_metric(
        tmp_path, toy_scenario, toy_run):
    rows = [(0, 128, 4), (0, 64, 6), (0.3, 32, 3)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = toy_run(toy_scenario(tmp_path / "a", rows=rows))
    empty = toy_run(with_faults(toy_scenario(tmp_path / "b", rows=rows), {}))
    assert "faults" not in plain.metrics
    assert plain.metrics == empty.metrics


# -- a slow device ---------------------------------------------------------------------------------
def test_a_slowed_device_takes_factor_times_longer_for_steps_started_in_the_window(
        tmp_path, toy_scenario, toy_run, toy_steps):
    path = with_faults(toy_scenario(tmp_path, rows=[(0, 128, 4), (0, 128, 6)]),
                       {"hot": {"kind": "slow", "device": "cpu", "factor": 2, "start_s": 0.25,
                                "end_s": 0.6}})
    out = toy_run(path)
    # prefill 0-0.25 (before the window); decode steps started at 0.25 and 0.5 take 2 x 0.125;
    # the one started at 0.75 is past the window
    assert toy_steps(out) == [
        ("cpu", "prefill", 0.0, 0.25, (0, 1)),
        ("cpu", "decode", 0.25, 0.5, (0, 1)),
        ("cpu", "decode", 0.5, 0.75, (0, 1)),
        ("cpu", "decode", 0.75, 0.875, (0, 1)),
        ("cpu", "decode", 0.875, 1.0, (1,)),
        ("cpu", "decode", 1.0, 1.125, (1,)),
    ]
    assert out.metrics["faults"] == {"num_lost_steps": 0, "num_failed_steps": 0,
                                     "num_requests_failed": 0}
    assert out.metrics["devices"]["cpu"]["busy_s"] == 1.125


# -- a device failure ------------------------------------------------------------------------------
def test_a_failed_prefill_device_loses_its_step_and_prefill_moves_until_it_returns(
        tmp_path, toy_scenario, toy_run, toy_steps, toy_timeline):
    rows = [(0, 128, 4), (0, 128, 6), (0.5, 128, 3), (0.8, 128, 3)]
    path = with_faults(toy_scenario(tmp_path, rows=rows, engine={"max_batch": 4},
                                    scheduling=HYBRID),
                       {"npu-dies": {"kind": "device-failure", "device": "cpu", "start_s": 0.1,
                                     "end_s": 0.7}})
    out = toy_run(path)
    # 0-0.1: r0, r1 prefill on the cpu ("npu"), lost at 0.1; asked again without the cpu, the
    # policy puts prefill on the gpu, where the batch runs again from scratch.  r2 (0.5) waits
    # for the gpu's decode step; the cpu is back at 0.7, so r3 (0.8) prefills there.
    assert toy_steps(out) == [
        ("gpu", "prefill", 0.1, 0.35, (0, 1)),
        ("gpu", "decode", 0.35, 0.475, (0, 1)),
        ("gpu", "decode", 0.475, 0.6, (0, 1)),
        ("gpu", "prefill", 0.6, 0.725, (2,)),
        ("gpu", "decode", 0.725, 0.85, (0, 1, 2)),
        ("cpu", "prefill", 0.8, 0.925, (3,)),
        ("gpu", "decode", 0.85, 0.975, (1, 2)),
        ("gpu", "decode", 0.975, 1.1, (1, 3)),
        ("gpu", "decode", 1.1, 1.225, (3,)),
    ]
    assert toy_timeline(out)[0] == (0.0, 0.1, 0.35, 0.85)  # admitted again at 0.1
    assert out.metrics["faults"]["num_lost_steps"] == 1
    assert out.metrics["num_completed"] == 4
    assert_every_request_ended(out)


def test_a_failed_decode_device_loses_the_step_in_flight_and_decode_moves(
        tmp_path, toy_scenario, toy_run, toy_steps):
    path = with_faults(toy_scenario(tmp_path, rows=[(0, 128, 4)], scheduling=HYBRID),
                       {"gpu-dies": {"kind": "device-failure", "device": "gpu", "start_s": 0.3}})
    out = toy_run(path)
    # the decode step 0.25-0.375 on the gpu is lost at 0.3 and runs again on the cpu
    assert toy_steps(out) == [
        ("cpu", "prefill", 0.0, 0.125, (0,)),
        ("gpu", "decode", 0.125, 0.25, (0,)),
        ("cpu", "decode", 0.3, 0.425, (0,)),
        ("cpu", "decode", 0.425, 0.55, (0,)),
    ]
    assert out.state.generated.tolist() == [4]
    assert out.metrics["faults"]["num_lost_steps"] == 1


def test_a_policy_pinned_to_a_failed_device_fails_its_requests_with_the_reason(
        tmp_path, toy_scenario, toy_run):
    rows = [(0, 128, 4), (0, 128, 6), (0.5, 128, 3)]
    path = with_faults(toy_scenario(tmp_path, rows=rows, engine={"max_batch": 2},
                                    scheduling={"kind": "static", "prefill": "gpu",
                                                "decode_attention": "cpu", "decode_ffn": "cpu"}),
                       {"gpu-dies": {"kind": "device-failure", "device": "gpu",
                                     "start_s": 0.1}})
    out = toy_run(path)
    why = ("device gpu failed at t = 0.1 s (fault 'gpu-dies') and scheduling policy 'static' "
           "placed work on it")
    assert reasons(out) == {0: why, 1: why, 2: why}
    assert out.state.finish_s.tolist() == [0.1, 0.1, 0.5]  # r2 fails as it arrives
    assert out.metrics["faults"] == {"num_lost_steps": 1, "num_failed_steps": 0,
                                     "num_requests_failed": 3}
    assert_every_request_ended(out)


def test_when_every_device_has_failed_every_request_left_fails(tmp_path, toy_scenario, toy_run):
    path = with_faults(toy_scenario(tmp_path, rows=[(0, 128, 4), (0.5, 32, 2)],
                                    scheduling=HYBRID),
                       [{"kind": "device-failure", "device": "cpu", "start_s": 0.2},
                        {"kind": "device-failure", "device": "gpu", "start_s": 0.2}])
    out = toy_run(path)
    why = ("every device has failed: device cpu failed at t = 0.2 s (fault '0'); device gpu "
           "failed at t = 0.2 s (fault '1')")
    assert reasons(out) == {0: why, 1: why}
    assert out.state.finish_s.tolist() == [0.2, 0.5]
    assert_every_request_ended(out)


def test_a_failed_draft_device_fails_the_drafting_decode_steps_requests(tmp_path, toy_scenario,
                                                                        toy_run):
    path = with_faults(toy_scenario(tmp_path, rows=[(0, 128, 8), (0.05, 128, 8)],
                                    scheduling=HYBRID),
                       {"cpu-dies": {"kind": "device-failure", "device": "cpu", "start_s": 0.2}})
    doc = yaml.safe_load(path.read_text())
    doc["policies"]["speculation"] = {"kind": "fixed", "k": 2}
    doc["speculation"] = {"draft_source": "layer-skip", "draft_layers": 1, "draft_device": "cpu"}
    path.write_text(yaml.safe_dump(doc))
    out = toy_run(path)
    # decode moves nowhere (the gpu is up) but its drafts must run on the cpu
    why = ("device cpu failed at t = 0.2 s (fault 'cpu-dies') and the draft model runs on it "
           "(speculation.draft_device)")
    assert set(reasons(out).values()) == {why}
    assert out.metrics["num_failed"] == 2
    assert_every_request_ended(out)


# -- a step error ----------------------------------------------------------------------------------
def test_a_step_error_fails_that_steps_requests_and_the_run_goes_on(tmp_path, toy_scenario,
                                                                    toy_run, toy_steps):
    rows = [(0, 128, 4), (0, 128, 6), (0, 128, 3)]
    path = with_faults(toy_scenario(tmp_path, rows=rows, engine={"max_batch": 2}),
                       {"crash": {"kind": "step-error", "at_step": 2}})
    out = toy_run(path)
    # step 1: prefill (0, 1); step 2, the decode of (0, 1), raises as it starts (no time)
    assert toy_steps(out) == [
        ("cpu", "prefill", 0.0, 0.25, (0, 1)),
        ("cpu", "prefill", 0.25, 0.375, (2,)),
        ("cpu", "decode", 0.375, 0.5, (2,)),
        ("cpu", "decode", 0.5, 0.625, (2,)),
    ]
    why = "executor error at engine step 2 (decode; injected fault 'crash')"
    assert reasons(out) == {0: why, 1: why}
    assert out.state.status.tolist() == [FAILED, FAILED, COMPLETED]
    assert out.error is None  # not a policy failure: the run went on
    assert out.metrics["faults"]["num_failed_steps"] == 1
    assert_every_request_ended(out)


def test_a_phase_step_error_counts_only_that_phases_steps(tmp_path, toy_scenario, toy_run):
    rows = [(0, 128, 2), (0.5, 128, 2)]
    path = with_faults(toy_scenario(tmp_path, rows=rows),
                       {"crash": {"kind": "step-error", "at_step": 2, "phase": "prefill"}})
    out = toy_run(path)
    assert reasons(out) == {1: "executor error at engine step 3 (prefill; injected fault "
                               "'crash')"}
    assert_every_request_ended(out)


# -- the KV budget shrinks -------------------------------------------------------------------------
def test_a_kv_shrink_fails_the_youngest_until_the_rest_fits(tmp_path, toy_scenario, toy_run,
                                                            toy_steps):
    # each request: 32 + 16 tokens = 3 blocks held or reserved; 9 blocks fit all three
    rows = [(0, 32, 16), (0, 32, 16), (0, 32, 16)]
    path = with_faults(toy_scenario(tmp_path, rows=rows,
                                    engine={"max_batch": 3, "kv_budget_bytes": 9 * BLOCK}),
                       {"squeeze": {"kind": "kv-shrink", "budget_bytes": 6 * BLOCK,
                                    "start_s": 0.2}})
    out = toy_run(path)
    assert reasons(out) == {2: "the KV budget shrank to 24576 bytes at t = 0.2 s and its KV no "
                               "longer fits"}
    steps = toy_steps(out)
    assert steps[:3] == [("cpu", "prefill", 0.0, 0.09375, (0, 1, 2)),
                         ("cpu", "decode", 0.09375, 0.21875, (0, 1, 2)),  # r2's token dropped
                         ("cpu", "decode", 0.21875, 0.34375, (0, 1))]
    assert out.state.generated.tolist() == [16, 16, 1]
    assert out.state.finish_s.tolist() == [0.09375 + 15 * 0.125] * 2 + [0.2]
    assert_every_request_ended(out)


def test_after_a_kv_shrink_admission_waits_for_the_budget_and_never_fitting_requests_fail(
        tmp_path, toy_scenario, toy_run, toy_timeline):
    rows = [(0, 32, 16), (0, 32, 16), (0, 32, 16), (0.1, 32, 16), (0.6, 64, 64)]
    path = with_faults(toy_scenario(tmp_path, rows=rows,
                                    engine={"max_batch": 3, "kv_budget_bytes": 9 * BLOCK}),
                       {"squeeze": {"kind": "kv-shrink", "budget_bytes": 6 * BLOCK,
                                    "start_s": 0.2, "end_s": 0.5}})
    out = toy_run(path)
    # at 0.2 r2 fails and r3 (waiting since 0.1) cannot fit 6 blocks next to r0 and r1; the
    # budget is back at 0.5, and r3 is admitted at the next prefill, after the decode step
    # running then (0.46875-0.59375).  r4 (8 blocks) could fit 9 blocks but not beside the others
    timeline = toy_timeline(out)
    assert timeline[3][1] == 0.59375
    assert set(reasons(out)) == {2}
    assert out.metrics["num_completed"] == 4
    assert_every_request_ended(out)
    # shrink for good to 2 blocks: nobody fits, the waiting request as it can never fit
    path = with_faults(path, {"squeeze": {"kind": "kv-shrink", "budget_bytes": 2 * BLOCK,
                                          "start_s": 0.2}})
    out = toy_run(path)
    never = "the KV budget shrank to 8192 bytes at t = 0.2 s: the request's KV can never fit it"
    assert reasons(out)[3] == never
    assert reasons(out)[4] == "needs 32768 bytes of KV cache, more than the whole budget of 8192"
    assert out.metrics["num_completed"] == 0
    assert_every_request_ended(out)


def test_under_a_kv_shrink_the_tiering_policy_is_asked_at_once_and_saves_requests(
        tmp_path, toy_scenario, toy_run):
    # 4 requests of 128 + 64 tokens (12 blocks each at FP16), 48 blocks; the budget halves
    rows = [(0, 128, 64)] * 4
    engine = {"max_batch": 4, "kv_budget_bytes": 48 * BLOCK}
    squeeze = {"squeeze": {"kind": "kv-shrink", "budget_frac": 0.5, "start_s": 1.0}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fp16 = toy_run(with_faults(toy_scenario(tmp_path / "a", rows=rows, engine=engine), squeeze))
    path = with_faults(toy_scenario(tmp_path / "b", rows=rows, engine=engine), squeeze)
    doc = yaml.safe_load(path.read_text())
    doc["policies"]["tiering"] = {"kind": "progressive", "keep_backup": False}
    path.write_text(yaml.safe_dump(doc))
    progressive = toy_run(path)
    assert fp16.metrics["num_failed"] == 2  # 24 blocks: two requests' futures
    assert progressive.metrics["num_failed"] < fp16.metrics["num_failed"]
    assert progressive.metrics["kv_moves"]  # it moved blocks under the pressure
    for out in (fp16, progressive):
        assert_every_request_ended(out)


# -- an allocation cap -----------------------------------------------------------------------------
def test_an_allocation_cap_fails_the_request_whose_allocation_would_pass_it(
        tmp_path, toy_scenario, toy_run):
    rows = [(0, 30, 20), (0, 30, 20), (0, 30, 20)]
    path = with_faults(toy_scenario(tmp_path, rows=rows, engine={"max_batch": 3}),
                       {"oom": {"kind": "alloc-cap", "cap_bytes": 5 * BLOCK}})
    out = toy_run(path)
    # r0, r1 prompts: 2 blocks each; r2's 2 would make 6 > 5; at token 33 r0 grows to the cap
    # and r1's third block fails
    assert reasons(out) == {
        1: "KV allocation of 4096 bytes failed: 20480 of the 20480-byte allocation cap in use "
           "(injected fault)",
        2: "KV allocation of 8192 bytes failed: 16384 of the 20480-byte allocation cap in use "
           "(injected fault)"}
    assert out.state.generated.tolist() == [20, 2, 0]
    assert_every_request_ended(out)


# -- every fault keeps every request accounted for -------------------------------------------------
KINDS = {
    "slow": {"kind": "slow", "device": "gpu", "factor": 3.0, "start_s": 0.3, "end_s": 1.5},
    "device-failure": {"kind": "device-failure", "device": "cpu", "start_s": 0.45},
    "device-failure-return": {"kind": "device-failure", "device": "gpu", "start_s": 0.4,
                              "end_s": 0.9},
    "kv-shrink": {"kind": "kv-shrink", "budget_frac": 0.2, "start_s": 0.5},
    "alloc-cap": {"kind": "alloc-cap", "cap_bytes": 12 * BLOCK, "start_s": 0.2},
    "step-error": {"kind": "step-error", "at_step": 7},
}
WORKLOAD = {"arrival": {"kind": "poisson", "rate_per_s": 12.0}, "num_requests": 24,
            "prompt": 64, "output": 12,
            "engine": {"max_batch": 4, "kv_budget_bytes": 64 * BLOCK}}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_fault_kind_ends_every_request_completed_or_failed(tmp_path, toy_scenario, toy_run,
                                                                 kind):
    path = with_faults(toy_scenario(tmp_path, scheduling=HYBRID, **WORKLOAD), {"f": KINDS[kind]})
    out = toy_run(path)
    assert_every_request_ended(out)
    assert out.error is None
    if kind != "slow":
        assert out.metrics["num_failed"] > 0 or out.metrics["faults"]["num_lost_steps"] > 0
    assert out.metrics["faults"]["num_requests_failed"] == out.metrics["num_failed"]


EVENT = st.one_of(
    st.builds(lambda d, f, a, b: {"kind": "slow", "device": d, "factor": f, "start_s": a,
                                  "end_s": a + b},
              st.sampled_from(["cpu", "gpu"]), st.floats(1, 8), st.floats(0, 2),
              st.floats(0.01, 2)),
    st.builds(lambda d, a, b: {"kind": "device-failure", "device": d, "start_s": a,
                               **({"end_s": a + b} if b else {})},
              st.sampled_from(["cpu", "gpu"]), st.floats(0, 2), st.sampled_from([0, 0.05, 0.5])),
    st.builds(lambda f, a: {"kind": "kv-shrink", "budget_frac": f, "start_s": a},
              st.floats(0.05, 1), st.floats(0, 2)),
    st.builds(lambda c, a: {"kind": "alloc-cap", "cap_bytes": c * BLOCK, "start_s": a},
              st.integers(1, 80), st.floats(0, 2)),
    st.builds(lambda n, p: {"kind": "step-error", "at_step": n, "phase": p},
              st.integers(1, 60), st.sampled_from(["any", "prefill", "decode"])),
)


@settings(max_examples=40, deadline=None)
@given(events=st.lists(EVENT, min_size=1, max_size=4),
       scheduling=st.sampled_from([HYBRID, {"kind": "least-finish-time"},
                                   {"kind": "paper", "gpu": "gpu", "npu": "cpu"}]))
def test_any_mix_of_faults_keeps_every_request_accounted_for(tmp_path_factory, toy_scenario,
                                                             toy_run, events, scheduling):
    path = with_faults(toy_scenario(tmp_path_factory.mktemp("mix"), scheduling=scheduling,
                                    **WORKLOAD), events)
    out = toy_run(path)
    assert out.error is None
    assert_every_request_ended(out)


# -- the shared bus lets a lost transfer go --------------------------------------------------------
def test_a_cancelled_bus_transfer_stops_taking_bandwidth():
    env = simpy.Environment()
    bus = SharedBus(env, 100.0)
    done = {}

    def move(name, num_bytes, cancel_at=None):
        ev = bus.transfer(num_bytes, 100.0)
        if cancel_at is None:
            yield ev
            done[name] = env.now
        else:
            yield env.timeout(cancel_at)
            bus.cancel(ev)
            done[name] = None

    env.process(move("a", 100.0))  # alone: 1 s; sharing with b until 0.5 s: 25 bytes by then
    env.process(move("b", 100.0, cancel_at=0.5))
    env.run()
    assert done == {"b": None, "a": 0.5 + 75.0 / 100.0}


# -- the bundled fault scenarios -------------------------------------------------------------------
def _bundled(name: str) -> dict:
    path = scenarios.locate(name)
    return {variant: run_scenario(scn, variant, "roofline", path.parent, record_trace=True)
            for variant, scn in resolve_runs(path, [])}


def test_bundled_npu_failure_moves_prefill_to_the_igpu_and_a_pinned_policy_fails(toy_steps):
    runs = _bundled("faults-device-failure")
    for out in runs.values():
        assert_every_request_ended(out)

    def prefill_devices(variant: str, start_s: float, end_s: float) -> set[str]:
        return {dev for dev, op, t, _end, _ids in toy_steps(runs[variant])
                if op == "prefill" and start_s <= t < end_s}

    assert prefill_devices("baseline", 0, 1e9) == {"npu"}
    assert prefill_devices("npu-fails", 40.4, 1e9) == {"igpu"}
    assert prefill_devices("npu-fails", 0, 40.4) == {"npu"}
    moved = runs["npu-fails"]
    assert moved.metrics["num_completed"] == 24
    assert moved.metrics["faults"]["num_lost_steps"] == 1
    assert prefill_devices("npu-fails-30s", 40.4, 70) == {"igpu"}
    assert prefill_devices("npu-fails-30s", 70, 1e9) == {"npu"}
    pinned = runs["pinned-npu-fails"]
    assert pinned.metrics["num_failed"] > 0
    assert all(r.startswith("device npu failed at t = 40.4 s (fault 'npu-dies')")
               for r in pinned.state.fail_reason.values())
    slow, base = runs["igpu-slow-2x"].metrics, runs["baseline"].metrics
    assert slow["tpot_s"]["p50"] > base["tpot_s"]["p50"]


def test_bundled_kv_shrink_costs_fp16_requests_and_progressive_none():
    runs = _bundled("faults-kv-shrink")
    for out in runs.values():
        assert_every_request_ended(out)
    m = {v: out.metrics for v, out in runs.items()}
    assert m["fp16"]["num_failed"] == 0 and m["progressive"]["num_failed"] == 0
    assert m["fp16-shrink"]["num_failed"] > 0
    assert m["progressive-shrink"]["num_failed"] < m["fp16-shrink"]["num_failed"]
    assert m["progressive-shrink"]["kv_peak_bytes"] <= 4.0e9
