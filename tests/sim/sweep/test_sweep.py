"""Sweeps (sim/sweep/, sim/cli/sweep.py, sim/report/sweep.py): expansion of sweep files into points,
the local pool and a Dask LocalCluster giving identical results, resume after a kill, failed points,
bad files, the Pareto front and the report."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from sim.cli.sweep import SWEEP_DIR, sweep_names
from sim.errors import UserError
from sim.sweep.pareto import best, pareto_front
from sim.sweep.results import POINTS_FILE, read_manifest, read_table
from sim.sweep.run import ExecutorSpec, run_sweep
from sim.sweep.spec import RangeAxis, SweepFile, expand, load_sweep

TIMEOUT_S = 120
REPO = Path(__file__).resolve().parents[3]
INT8 = {"kind": "uniform", "precision": "int8"}
# passes validation, fails when the engine writes the first block: a genuine failed point
BAD_TIERING = {"kind": "tests.plugin_policies:InfeasibleTiering"}


def write_sweep(tmp_path: Path, axes: dict, name: str = "small", **extra) -> Path:
    doc = {"name": name, "base": "quickstart", "overrides": {"workload.num_requests": 4},
           "axes": axes, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def small_axes() -> dict:
    return {"policies.tiering": [{"kind": "fp16"}, INT8],
            "engine.max_batch": {"low": 1, "high": 4, "num": 2},
            "workload.arrival.concurrency": [1, 4]}


def start_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # tests.plugin_policies importable
    return subprocess.Popen([sys.executable, "-m", "sim.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=env)


# -- sweep files -> points ---------------------------------------------------------------------

def test_range_axes_give_hand_computed_values():
    assert RangeAxis(low=1, high=8, step=3).grid() == [1, 4, 7]
    assert RangeAxis(low=0.5, high=1.0, num=3).grid() == [0.5, 0.75, 1.0]
    assert RangeAxis(low=1e6, high=1e8, num=3, log=True).grid() == [1e6, 1e7, 1e8]
    assert RangeAxis(low=2, high=4, num=3).grid() == [2, 3, 4]  # integer ends: integers
    assert RangeAxis(low=0.1, high=0.9).grid() is None  # continuous: random sampling only


def test_grid_is_the_product_in_file_order_and_random_sampling_is_seeded():
    spec = SweepFile(name="s", base="quickstart",
                     axes={"a": [1, 2], "b": RangeAxis(low=10, high=30, step=10)})
    assert expand(spec) == [{"a": 1, "b": 10}, {"a": 1, "b": 20}, {"a": 1, "b": 30},
                            {"a": 2, "b": 10}, {"a": 2, "b": 20}, {"a": 2, "b": 30}]
    rand = SweepFile(name="s", base="quickstart", samples=20, seed=4,
                     axes={"a": [1, 2, 3], "x": RangeAxis(low=0.0, high=1.0)})
    draws = expand(rand)
    assert draws == expand(rand)  # same seed, same points
    assert len(draws) == 20 and len({json.dumps(d, sort_keys=True) for d in draws}) == 20
    assert all(d["a"] in (1, 2, 3) and 0.0 <= d["x"] <= 1.0 for d in draws)
    assert draws != expand(rand.model_copy(update={"seed": 5}))


def test_point_ids_are_stable_and_depend_on_everything_that_makes_the_scenario(tmp_path):
    path = write_sweep(tmp_path, small_axes())
    first, again = load_sweep(path), load_sweep(path)
    assert [p.point_id for p in first.points] == [p.point_id for p in again.points]
    assert len({p.point_id for p in first.points}) == len(first.points) == 8
    other = write_sweep(tmp_path, small_axes(), name="other",
                        overrides={"workload.num_requests": 5})
    assert not {p.point_id for p in load_sweep(other).points} & {p.point_id for p in
                                                                 first.points}


def test_the_baseline_point_is_marked_and_added_when_sampling_missed_it(tmp_path):
    grid = load_sweep(write_sweep(tmp_path, small_axes()))
    assert [p.is_baseline for p in grid.points] == [True] + [False] * 7  # every axis' first
    path = write_sweep(tmp_path, {"engine.kv_budget_bytes": {"low": 1.0e7, "high": 1.0e8}},
                       name="rand", samples=3, baseline={"engine.kv_budget_bytes": 5.0e7})
    rand = load_sweep(path)
    assert len(rand.points) == 4 and rand.points[0].is_baseline
    assert rand.points[0].values == {"engine.kv_budget_bytes": 5.0e7}


def test_bundled_sweeps_validate_and_one_has_at_least_1000_points():
    sizes = {name: len(load_sweep(SWEEP_DIR / f"{name}.yaml").points) for name in sweep_names()}
    assert {"paper-techniques", "kv-tiering-tradeoff", "tiering-grid-1000"} <= set(sizes)
    assert sizes["tiering-grid-1000"] >= 1000
    assert sizes["paper-techniques"] == 32  # 2^4 technique combinations x 2 cost models


def test_list_names_the_bundled_sweeps():
    proc = start_cli("list")
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    assert {"paper-techniques", "kv-tiering-tradeoff", "tiering-grid-1000"} <= set(
        out.decode().split())


@pytest.mark.parametrize("axes, field", [
    ({"engine.max_batch": [4, 0]}, "axes.engine.max_batch"),  # pydantic: ge=1
    ({"policies.tiering": [{"kind": "fp16"}, {"kind": "nope"}]}, "axes.policies.tiering"),
    ({"model.spec": ["smollm2-135m", "no-such-model"]}, "axes.model.spec"),  # check_scenario
])
def test_an_invalid_axis_value_names_the_sweep_file_and_the_axis(tmp_path, axes, field):
    path = write_sweep(tmp_path, axes)
    with pytest.raises(UserError) as err:
        load_sweep(path)
    assert err.value.file == str(path) and err.value.field == field


@pytest.mark.parametrize("axes, extra, field", [
    ({"engine.max_batch": {"low": 5, "high": 1, "step": 1}}, {}, "axes.engine.max_batch"),
    ({"engine.max_batch": 4}, {}, "axes.engine.max_batch"),  # neither a list nor a range
    ({"engine.max_batch": {"low": 1, "high": 4}}, {}, "axes.engine.max_batch"),  # no step
    ({"engine.max_batch": [1, 2]}, {"baseline": {"engine.block_tokens": 8}},
     "baseline.engine.block_tokens"),
    ({"engine.max_batch": [1, 2]}, {"base": "no-such-scenario"}, "base"),
])
def test_a_bad_sweep_file_names_the_field(tmp_path, axes, extra, field):
    with pytest.raises(UserError) as err:
        load_sweep(write_sweep(tmp_path, axes, **extra))
    assert err.value.field == field


def test_a_bad_sweep_file_exits_2_naming_file_and_field(tmp_path):
    bad_value = write_sweep(tmp_path, {"engine.max_batch": [4, 0]}, name="bad-value")
    unknown_key = write_sweep(tmp_path, {"engine.max_batch": [4]}, name="unknown-key",
                              sampels=10)
    procs = [start_cli("sweep", str(p), "--out", str(tmp_path / "out"))
             for p in (bad_value, unknown_key)]
    for proc, path, field in zip(procs, (bad_value, unknown_key),
                                 ("axes.engine.max_batch", "sampels")):
        out, err = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 2, err
        assert out == b"" and b"Traceback" not in err
        assert str(path).encode() in err and field.encode() in err
    assert not (tmp_path / "out").exists()  # nothing ran


# -- running -----------------------------------------------------------------------------------

def test_local_pool_and_dask_give_identical_results(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    sweep = load_sweep(write_sweep(tmp_path, small_axes()))
    local = run_sweep(sweep, tmp_path / "local", ExecutorSpec("local", num_workers=2))
    dask = run_sweep(sweep, tmp_path / "dask", ExecutorSpec("dask", num_workers=2))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:  # a "remote" one
        spec = ExecutorSpec.parse(f"dask={cluster.scheduler_address}")
        remote = run_sweep(sweep, tmp_path / "remote", spec)
    assert local.num_ok == dask.num_ok == remote.num_ok == 8
    assert not (local.lost or dask.lost or remote.lost)
    assert "LocalCluster" in dask.executor and cluster.scheduler_address in remote.executor
    table = read_table(tmp_path / "local")
    assert table == read_table(tmp_path / "dask") == read_table(tmp_path / "remote")


def test_a_rerun_completes_only_the_missing_points(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, small_axes()))
    out, spec = tmp_path / "out", ExecutorSpec("local", num_workers=2)
    first = run_sweep(replace(sweep, points=sweep.points[:3]), out, spec)  # "killed" after 3
    assert first.num_run == 3
    assert read_manifest(out)["state"] == "complete" and len(read_table(out)) == 3
    ran: list[str] = []
    second = run_sweep(sweep, out, spec, on_point=lambda r: ran.append(r["point_id"]))
    assert sorted(ran) == sorted(p.point_id for p in sweep.points[3:])
    assert second.num_skipped == 3 and read_manifest(out)["state"] == "complete"
    whole = run_sweep(sweep, tmp_path / "whole", spec)
    assert whole.num_run == 8 and read_table(out) == read_table(tmp_path / "whole")


def test_a_killed_sweep_process_resumes_with_only_the_missing_points(tmp_path):
    axes = {"policies.tiering": [{"kind": "fp16"}, INT8, {"kind": "progressive"}],
            "engine.max_batch": [1, 2, 4, 8], "engine.block_tokens": [8, 16, 32]}
    path = write_sweep(tmp_path, axes, overrides={})  # 36 points of 16 requests: seconds
    out = tmp_path / "out"
    proc = start_cli("sweep", str(path), "--out", str(out), "--workers", "1")
    log, deadline = out / POINTS_FILE, time.monotonic() + TIMEOUT_S
    while not (log.exists() and log.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "sweep ended too soon"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its pool's worker
    proc.wait(timeout=TIMEOUT_S)
    done = {json.loads(line)["point_id"] for line in log.read_text().splitlines()}
    sweep = load_sweep(path)
    missing = {p.point_id for p in sweep.points} - done
    assert done and missing
    ran: list[str] = []
    run_sweep(sweep, out, ExecutorSpec("local", num_workers=2),
              on_point=lambda r: ran.append(r["point_id"]))
    assert sorted(ran) == sorted(missing)
    assert len(read_table(out)) == 36 and read_manifest(out)["state"] == "complete"


def test_a_failed_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = write_sweep(tmp_path, {"policies.tiering": [{"kind": "fp16"}, BAD_TIERING, INT8]})
    out = tmp_path / "out"
    proc = start_cli("sweep", str(path), "--out", str(out), "--json")
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)  # exactly one JSON object on stdout
    assert (summary["num_points"], summary["num_ok"], summary["num_failed"]) == (3, 2, 1)
    rows = {r["policies.tiering"]: r for r in read_table(out)}
    failed = rows["tests.plugin_policies:InfeasibleTiering"]
    assert failed["status"] == "failed" and "InfeasibleDecision" in failed["error"]
    assert failed["throughput_tok_s"] is None
    assert rows["uniform(precision=int8)"]["status"] == "ok"
    assert rows["fp16"]["speedup_vs_baseline"] == 1.0
    table = read_table(out)
    (out / "results.parquet").unlink()
    assert read_table(out) == table  # the CSV holds the same table, types and all


# -- Pareto fronts and the report --------------------------------------------------------------

def test_pareto_front_of_a_hand_made_table():
    rows = [
        {"tok_s": 10.0, "kv": 100, "q": 99.0},  # 0: front (most throughput)
        {"tok_s": 8.0, "kv": 50, "q": 99.0},  # 1: front (less KV than 0)
        {"tok_s": 8.0, "kv": 60, "q": 99.0},  # 2: dominated by 1
        {"tok_s": 5.0, "kv": 50, "q": 100.0},  # 3: front (best quality)
        {"tok_s": 5.0, "kv": 50, "q": 98.0},  # 4: dominated by 3 (and 1)
        {"tok_s": None, "kv": 10, "q": 100.0},  # 5: no throughput: takes no part
        {"tok_s": 8.0, "kv": 50, "q": 99.0},  # 6: equal to 1: on the front too
    ]
    assert pareto_front(rows, {"tok_s": "max", "kv": "min", "q": "max"}) == [0, 1, 3, 6]
    assert pareto_front(rows, {"tok_s": "max", "kv": "min"}) == [0, 1, 6]
    assert best(rows, "kv", "min") == 5
    assert best(rows, "q", "max", tie_break="tok_s") == 3  # 3 and 5 tie; 5 has no tok_s
    assert best(rows, "tok_s", "max") == 0 and best([], "kv", "min") is None


def test_the_report_draws_the_fronts_and_the_best_points(tmp_path):
    path = write_sweep(tmp_path, {"policies.tiering": [{"kind": "fp16"}, INT8, BAD_TIERING]})
    run_sweep(load_sweep(path), tmp_path / "out", ExecutorSpec("local", num_workers=1))
    from sim.report.sweep import render

    html = render(tmp_path / "out")
    assert html.startswith("<!DOCTYPE html>") and html.count('<div class="chart"') == 3
    for text in ("Throughput vs KV memory", "TTFT vs decode speed", "Best point per objective",
                 "Failed points (1)", "InfeasibleDecision", "uniform(precision=int8)"):
        assert text in html
    from sim.report.plot import plotly_js

    own = html.replace(plotly_js(), "")  # the page less plotly.js, inlined once
    assert len(own) < len(html) and own.count("<script>") == 2 and "http" not in own
