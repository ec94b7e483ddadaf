"""Overload: a bounded waiting queue (``engine.max_waiting``).  A request that arrives to a full
waiting room (the requests waiting beyond the free batch slots) fails as rejected; ``num_rejected``
counts them and the latency summaries cover completed requests only.  Hand-computed timelines on
the toy profile of conftest.py (a decode step is 0.125 s, a prefill prompt tokens / 1024 s)."""

from __future__ import annotations

import numpy as np
import pytest

import scenarios
from sim.config.scenario import resolve_runs
from sim.engine.state import COMPLETED, FAILED
from sim.run.runner import run_scenario


def rejected(max_waiting: int) -> str:
    return f"rejected: waiting queue full (max_waiting {max_waiting})"


@pytest.mark.parametrize("max_waiting, accepted", [(0, 1), (1, 2), (2, 3), (3, 4)])
def test_arrivals_beyond_the_free_slots_and_the_waiting_room_are_rejected(
        tmp_path, toy_scenario, toy_run, max_waiting, accepted):
    # four requests at t = 0, one batch slot: the first takes the slot, max_waiting more wait
    path = toy_scenario(tmp_path, rows=[(0, 32, 2)] * 4,
                        engine={"max_batch": 1, "max_waiting": max_waiting})
    out = toy_run(path)
    m = out.metrics
    assert (m["num_completed"], m["num_rejected"]) == (accepted, 4 - accepted)
    assert m["num_failed"] == m["num_rejected"]
    assert out.state.fail_reason == {rid: rejected(max_waiting) for rid in range(accepted, 4)}
    assert out.state.finish_s[accepted:].tolist() == [0.0] * (4 - accepted)


def test_a_slot_freed_by_a_finished_request_admits_a_later_arrival(tmp_path, toy_scenario,
                                                                   toy_run, toy_timeline):
    # max_batch 2, max_waiting 0.  r0, r1 fill both slots (prefill 0-0.0625); r2 at 0.1 finds
    # none free and no waiting room; r0 (2 tokens) finishes at 0.1875; r3 at 0.2 gets its slot
    rows = [(0, 32, 2), (0, 32, 8), (0.1, 32, 2), (0.2, 32, 2)]
    path = toy_scenario(tmp_path, rows=rows, engine={"max_batch": 2, "max_waiting": 0})
    out = toy_run(path)
    assert out.state.status.tolist() == [COMPLETED, COMPLETED, FAILED, COMPLETED]
    assert out.state.fail_reason == {2: rejected(0)}
    arrival, admitted, first_token, finish = toy_timeline(out)[2]
    assert (arrival, finish) == (0.1, 0.1) and np.isnan(admitted) and np.isnan(first_token)
    assert toy_timeline(out)[3][:2] == (0.2, 0.3125)  # admitted after the step running at 0.2
    assert out.metrics["num_rejected"] == 1


def test_latency_summaries_cover_completed_requests_only(tmp_path, toy_scenario, toy_run):
    path = toy_scenario(tmp_path, rows=[(0, 32, 2)] * 4,
                        engine={"max_batch": 1, "max_waiting": 1})
    out = toy_run(path)
    # r0: prefill 0-0.03125, decode to 0.15625; r1: prefill 0.15625-0.1875, decode to 0.3125
    ttft, e2e = out.metrics["ttft_s"], out.metrics["e2e_s"]
    assert (ttft["p50"], ttft["mean"]) == (0.109375, 0.109375)
    assert ttft["p99"] == pytest.approx(0.03125 + 0.99 * 0.15625)
    assert (e2e["mean"], e2e["p99"]) == (0.234375, pytest.approx(0.15625 + 0.99 * 0.15625))


def test_without_max_waiting_nobody_is_rejected(tmp_path, toy_scenario, toy_run):
    out = toy_run(toy_scenario(tmp_path, rows=[(0, 32, 2)] * 4, engine={"max_batch": 1}))
    assert (out.metrics["num_completed"], out.metrics["num_rejected"]) == (4, 0)


def test_closed_loop_users_go_on_after_a_rejection(tmp_path, toy_scenario, toy_run):
    # 6 users, one slot, no waiting room: a rejected user thinks 0.2 s and sends its next
    path = toy_scenario(tmp_path, arrival={"kind": "closed", "concurrency": 6, "think_s": 0.2},
                        num_requests=30,
                        engine={"max_batch": 1, "max_waiting": 0})
    out = toy_run(path)
    m = out.metrics
    assert m["num_completed"] + m["num_failed"] == 30
    assert m["num_rejected"] == m["num_failed"] > 0
    assert m["num_completed"] > 1


def test_bundled_overload_trades_rejections_for_bounded_tails():
    path = scenarios.locate("overload-bounded-queue")
    m = {variant: run_scenario(scn, variant, "roofline", path.parent).metrics
         for variant, scn in resolve_runs(path, [])}
    order = ["unbounded", "max-waiting-64", "max-waiting-16", "max-waiting-4", "max-waiting-0"]
    for v in order:
        assert m[v]["num_completed"] + m[v]["num_failed"] == m[v]["num_requests"] == 300
        assert m[v]["num_failed"] == m[v]["num_rejected"]
    assert m["unbounded"]["num_rejected"] == 0
    rejected_counts = [m[v]["num_rejected"] for v in order]
    ttft_p99 = [m[v]["ttft_s"]["p99"] for v in order]
    e2e_p99 = [m[v]["e2e_s"]["p99"] for v in order]
    assert rejected_counts == sorted(rejected_counts) and rejected_counts[-1] > 150
    assert ttft_p99 == sorted(ttft_p99, reverse=True)
    assert e2e_p99 == sorted(e2e_p99, reverse=True)
    assert ttft_p99[0] > 100 > 1 > ttft_p99[-1]  # seconds: the unbounded queue grows
