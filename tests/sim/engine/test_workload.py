"""Workloads: seeded requests, length distributions, Poisson arrivals and trace files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim.config.scenario import WorkloadConfig
from sim.engine.workload import make_requests, read_trace
from sim.errors import UserError


def workload(**fields) -> WorkloadConfig:
    return WorkloadConfig.model_validate(fields)


MIXED = dict(arrival={"kind": "poisson", "rate_per_s": 4.0}, num_requests=64,
             prompt_tokens={"kind": "uniform", "low": 16, "high": 512},
             output_tokens={"kind": "lognormal", "median": 64, "sigma": 0.8, "low": 1,
                            "high": 256})


def columns(reqs) -> tuple[list, list, list]:
    return reqs.arrival_s.tolist(), reqs.prompt_tokens.tolist(), reqs.output_tokens.tolist()


def test_same_seed_same_requests(tmp_path):
    cfg = workload(**MIXED)
    assert columns(make_requests(cfg, 7, tmp_path)) == columns(make_requests(cfg, 7, tmp_path))


def test_different_seeds_differ_in_every_column(tmp_path):
    cfg = workload(**MIXED)
    a, b = make_requests(cfg, 7, tmp_path), make_requests(cfg, 8, tmp_path)
    assert not np.array_equal(a.arrival_s, b.arrival_s)
    assert not np.array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.output_tokens, b.output_tokens)


def test_arrival_stream_is_independent_of_the_length_distributions(tmp_path):
    # one seed, independent streams: changing how lengths are drawn keeps the arrival times
    a = make_requests(workload(**MIXED), 3, tmp_path)
    fixed = {**MIXED, "prompt_tokens": {"kind": "fixed", "value": 10}}
    b = make_requests(workload(**fixed), 3, tmp_path)
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert np.array_equal(a.output_tokens, b.output_tokens)


def test_poisson_inter_arrival_mean_is_near_one_over_rate(tmp_path):
    # 20000 exponential gaps of mean 0.25 s: the sample mean's standard error is 0.25 / sqrt(20000)
    # = 0.0018 s, so +-5 % (0.0125 s) is ~7 standard errors; the seed is fixed anyway.
    cfg = workload(arrival={"kind": "poisson", "rate_per_s": 4.0}, num_requests=20000)
    reqs = make_requests(cfg, 11, tmp_path)
    gaps = np.diff(np.concatenate([[0.0], reqs.arrival_s]))
    assert (gaps > 0).all()  # strictly increasing, first arrival after t=0
    assert 0.2375 < gaps.mean() < 0.2625
    # exponential: the standard deviation equals the mean
    assert 0.2375 < gaps.std() < 0.2625
    assert reqs.concurrency is None


def test_closed_loop_has_no_arrival_times_and_carries_the_users(tmp_path):
    cfg = workload(arrival={"kind": "closed", "concurrency": 3, "think_s": 0.5},
                   num_requests=5)
    reqs = make_requests(cfg, 0, tmp_path)
    assert np.isnan(reqs.arrival_s).all() and len(reqs) == 5
    assert (reqs.concurrency, reqs.think_s) == (3, 0.5)


def test_fixed_lengths_are_exact(tmp_path):
    cfg = workload(num_requests=6, prompt_tokens={"kind": "fixed", "value": 33},
                   output_tokens={"kind": "fixed", "value": 7})
    reqs = make_requests(cfg, 0, tmp_path)
    assert reqs.prompt_tokens.tolist() == [33] * 6
    assert reqs.output_tokens.tolist() == [7] * 6


def test_uniform_lengths_cover_both_ends_and_nothing_outside(tmp_path):
    cfg = workload(num_requests=2000, prompt_tokens={"kind": "uniform", "low": 3, "high": 6},
                   output_tokens={"kind": "uniform", "low": 1, "high": 1})
    reqs = make_requests(cfg, 5, tmp_path)
    assert set(reqs.prompt_tokens.tolist()) == {3, 4, 5, 6}  # high is inclusive
    assert set(reqs.output_tokens.tolist()) == {1}
    assert reqs.prompt_tokens.dtype == np.int64


def test_lognormal_lengths_are_clipped_to_low_high(tmp_path):
    # sigma 2 around 100 puts plenty of draws beyond both bounds
    cfg = workload(num_requests=2000,
                   prompt_tokens={"kind": "lognormal", "median": 100, "sigma": 2, "low": 50,
                                  "high": 150})
    prompts = make_requests(cfg, 5, tmp_path).prompt_tokens
    assert prompts.min() == 50 and prompts.max() == 150
    assert ((prompts > 50) & (prompts < 150)).any()


def write_trace(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_trace_is_read_and_sorted_by_arrival_keeping_rows_together(tmp_path):
    path = write_trace(tmp_path / "t.csv", "arrival_s,prompt_tokens,output_tokens\n"
                                           "2.5,30,3\n"
                                           "0.5,10,1\n"
                                           "1.0,20,2\n"
                                           "0.5,11,4\n")
    reqs = read_trace(path)
    # ties keep their order in the file
    assert columns(reqs) == ([0.5, 0.5, 1.0, 2.5], [10, 11, 20, 30], [1, 4, 2, 3])
    assert reqs.concurrency is None


def test_trace_columns_may_come_in_any_order(tmp_path):
    path = write_trace(tmp_path / "t.csv", "output_tokens,arrival_s,prompt_tokens\n5,0.25,9\n")
    assert columns(read_trace(path)) == ([0.25], [9], [5])


def test_trace_path_is_relative_to_the_scenario_directory(tmp_path):
    (tmp_path / "traces").mkdir()
    write_trace(tmp_path / "traces" / "t.csv",
                "arrival_s,prompt_tokens,output_tokens\n1,2,3\n0,4,5\n")
    cfg = workload(arrival={"kind": "trace", "path": "traces/t.csv"}, num_requests=99)
    # the trace's rows, not num_requests, decide how many requests there are
    assert columns(make_requests(cfg, 0, tmp_path)) == ([0.0, 1.0], [4, 2], [5, 3])


@pytest.mark.parametrize("rows, line, what", [
    ("0,8,2\nabc,8,2\n", 3, "'arrival_s'"),
    ("0,8,2\n0,8\n", 3, "'output_tokens'"),          # a short row
    ("0,8,2\n1,8,2\n2,1.5,2\n", 4, "'prompt_tokens'"),  # not an integer
    ("-1,8,2\n", 2, "arrival_s out of range"),
    ("0,0,2\n", 2, "prompt_tokens out of range"),
    ("0,8,0\n", 2, "output_tokens out of range"),
])
def test_bad_trace_line_names_the_file_and_the_line(tmp_path, rows, line, what):
    path = write_trace(tmp_path / "bad.csv", "arrival_s,prompt_tokens,output_tokens\n" + rows)
    with pytest.raises(UserError) as info:
        read_trace(path)
    err = info.value
    assert err.file == str(path)
    assert f"line {line}:" in err.message
    assert what in err.message
    assert str(err).startswith(f"{path}: line {line}:")


def test_trace_missing_a_column_names_it(tmp_path):
    path = write_trace(tmp_path / "t.csv", "arrival_s,prompt_tokens\n0,8\n")
    with pytest.raises(UserError, match="line 2: bad or missing 'output_tokens'"):
        read_trace(path)


def test_empty_trace_is_rejected(tmp_path):
    path = write_trace(tmp_path / "t.csv", "arrival_s,prompt_tokens,output_tokens\n")
    with pytest.raises(UserError, match="no requests") as info:
        read_trace(path)
    assert info.value.file == str(path)


def test_missing_trace_file_names_it(tmp_path):
    cfg = workload(arrival={"kind": "trace", "path": "nowhere.csv"})
    with pytest.raises(UserError, match="cannot read trace") as info:
        make_requests(cfg, 0, tmp_path)
    assert info.value.file == str(tmp_path / "nowhere.csv")


def test_bad_trace_line_after_a_blank_line_names_the_physical_line(tmp_path):
    path = write_trace(tmp_path / "bad.csv",
                       "arrival_s,prompt_tokens,output_tokens\n0,8,2\n\nabc,8,2\n")
    with pytest.raises(UserError) as info:
        read_trace(path)
    assert "line 4:" in info.value.message


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_arrival_is_a_bad_trace_line(tmp_path, value):
    path = write_trace(tmp_path / "bad.csv",
                       f"arrival_s,prompt_tokens,output_tokens\n0,8,2\n{value},8,2\n")
    with pytest.raises(UserError, match="line 3:"):
        read_trace(path)
