"""SimPy trace tests of the engine under closed-loop arrivals (users who send their next request
when the last one ends, after a think time): hand-computed timelines on the power-of-two profile
of ``toy_scenario`` (conftest.py)."""

from __future__ import annotations


def test_closed_loop_concurrency_one_runs_requests_back_to_back(tmp_path, toy_scenario, toy_run,
                                                                toy_steps, toy_timeline):
    path = toy_scenario(tmp_path, arrival={"kind": "closed", "concurrency": 1},
                        num_requests=4)
    out = toy_run(path)
    starts = [0.0, 0.40625, 0.8125, 1.21875]
    assert toy_timeline(out) == [(t, t, t + 0.03125, t + 0.40625) for t in starts]
    assert all(len(ids) == 1 for _, _, _, _, ids in toy_steps(out))
    assert out.metrics["makespan_s"] == 1.625


def test_closed_loop_think_time_delays_the_next_request(tmp_path, toy_scenario, toy_run,
                                                        toy_timeline):
    path = toy_scenario(tmp_path, arrival={"kind": "closed", "concurrency": 1,
                                           "think_s": 0.25}, num_requests=3)
    out = toy_run(path)
    # request i+1 arrives 0.25 s after request i finishes
    starts = [0.0, 0.65625, 1.3125]
    assert toy_timeline(out) == [(t, t, t + 0.03125, t + 0.40625) for t in starts]


def test_closed_loop_concurrency_two_keeps_two_in_flight(tmp_path, toy_scenario, toy_run,
                                                         toy_timeline):
    path = toy_scenario(tmp_path, arrival={"kind": "closed", "concurrency": 2},
                        num_requests=4)
    out = toy_run(path)
    # two users: a batch of two (64-token prefill = 0.0625 s, 3 decode steps), twice
    assert toy_timeline(out) == [(0.0, 0.0, 0.0625, 0.4375)] * 2 + \
        [(0.4375, 0.4375, 0.5, 0.875)] * 2


def test_closed_loop_with_many_failing_requests_ends_them_all(tmp_path, toy_scenario, toy_run):
    # every request needs 12288 bytes > 1000: each fails on arrival and starts the next user
    # request; 400 failures in a row once recursed past Python's recursion limit
    path = toy_scenario(tmp_path, arrival={"kind": "closed", "concurrency": 1},
                        num_requests=400, engine={"kv_budget_bytes": 1000})
    out = toy_run(path)
    assert out.metrics["num_failed"] == 400
    assert out.metrics["num_completed"] == 0
    assert (out.state.finish_s == 0.0).all()  # all fail at t=0: no time passes in between


# -- property: every request ends completed or failed ------------------------------------------
