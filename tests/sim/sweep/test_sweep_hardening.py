"""Sweeps given hostile or broken input (issue 15): grids and samples too large refused before
anything is built, values that are not JSON data (NaN, dates, aliases expanding to gigabytes)
refused naming the axis, NaN metrics recorded as a failed point, a corrupt log line or manifest
skipped or replaced, SIGINT/SIGTERM stopping the workers and writing the results, and --workers
checked."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from sim.cli.app import main
from sim.errors import UserError
from sim.sweep.pointlog import checked, valid_record
from sim.sweep.results import POINTS_FILE, read_manifest, read_table
from sim.sweep.run import ExecutorSpec, run_point, run_sweep
from sim.sweep.spec import MAX_POINTS, RangeAxis, SweepFile, load_sweep
from sim.sweep.values import MAX_VALUE_CHARS, problem

TIMEOUT_S = 120
REPO = Path(__file__).resolve().parents[3]


def write_sweep(tmp_path: Path, axes: dict, name: str = "small", **extra) -> Path:
    doc = {"name": name, "base": "quickstart", "overrides": {"workload.num_requests": 4},
           "axes": axes, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def refused(path: Path) -> UserError:
    with pytest.raises(UserError) as err:
        load_sweep(path)
    assert err.value.file == str(path)
    return err.value


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``infer-os ARGS`` in this process: exit status, stdout, stderr."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


# -- sizes: grid, samples, values --------------------------------------------------------------

def test_a_grid_too_large_is_refused_from_the_axes_lengths_before_building_it(tmp_path):
    path = write_sweep(tmp_path, {"engine.max_batch": {"low": 1, "high": 10**9, "step": 1}})
    tracemalloc.start()
    try:
        err = refused(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.field == "axes.engine.max_batch"
    assert "1,000,000,000 points" in err.message and f"{MAX_POINTS:,}" in err.message
    assert peak < 20 * 2**20  # a billion values were never made (that is gigabytes)


def test_a_grid_too_large_only_as_a_product_names_the_longest_axis(tmp_path):
    path = write_sweep(tmp_path, {"workload.arrival.concurrency": [1, 2, 3, 4],
                                  "engine.max_batch": {"low": 1, "high": 60_000, "step": 1}})
    err = refused(path)
    assert err.field == "axes.engine.max_batch" and "240,000 points" in err.message
    assert "60,000 values" in err.message


def test_a_range_whose_length_overflows_a_float_is_refused(tmp_path):
    path = write_sweep(tmp_path, {"engine.kv_budget_bytes": {"low": 0.0, "high": 1.0e300,
                                                             "step": 1.0e-300}})
    assert refused(path).field == "axes.engine.kv_budget_bytes"


def test_samples_beyond_the_cap_are_refused(tmp_path):
    axes = {"engine.kv_budget_bytes": {"low": 1.0e7, "high": 1.0e8}}
    err = refused(write_sweep(tmp_path, axes, samples=MAX_POINTS + 1))
    assert err.field == "samples" and f"{MAX_POINTS:,}".replace(",", "") in err.message
    assert len(load_sweep(write_sweep(tmp_path, axes, name="ok", samples=3)).points) == 4


def test_random_sampling_of_a_huge_stepped_range_does_not_build_it():
    spec = SweepFile(name="s", base="quickstart", samples=5, seed=1,
                     axes={"x": RangeAxis(low=0, high=10**15, step=1)})
    from sim.sweep.spec import expand

    tracemalloc.start()
    try:
        draws = expand(spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(draws) == 5 and all(0 <= d["x"] <= 10**15 for d in draws)
    assert peak < 2**20


def _alias_bomb(levels: int = 9, width: int = 10) -> list:
    value: list = [0] * width  # built as YAML aliases build it: each level shares the last
    for _ in range(levels):
        value = [value] * width
    return value  # 10^10 zeros as JSON, a few hundred objects in memory


def test_a_value_that_expands_to_gigabytes_is_refused_naming_the_axis(tmp_path):
    spec = SweepFile(name="s", base="quickstart",
                     axes={"policies.tiering": [{"kind": "fp16", "junk": _alias_bomb()}]})
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        spec.check(tmp_path / "s.yaml")
    assert time.monotonic() - started < 5
    assert err.value.field == "axes.policies.tiering"
    assert f"{MAX_VALUE_CHARS:,} characters" in err.value.message
    cycle: list = []
    cycle.append(cycle)  # YAML can make one too: &a [*a]
    assert problem(cycle) is not None and problem([[0] * 100] * 100) is None
    assert "not a string" in problem({"kind": "fp16", 1: "x"})  # json.dumps(sort_keys) fails


def alias_file(tmp_path: Path, levels: int) -> Path:
    """A sweep whose one axis value holds 10^(levels + 1) zeros, written in a few lines."""
    junk = ["&a0 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    junk += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    path = tmp_path / f"bomb{levels}.yaml"
    path.write_text("name: bomb\nbase: quickstart\naxes:\n  policies.tiering:\n"
                    f"    - {{kind: fp16, junk: [{', '.join(junk)}]}}\n")
    return path


def test_yaml_aliases_expanding_a_value_past_the_limit_are_refused_naming_the_axis(tmp_path):
    path = alias_file(tmp_path, 4)  # 100,000 zeros: 200 KB of JSON, from 6 lines
    err = refused(path)
    assert err.field == "axes.policies.tiering" and "65,536 characters" in err.message


def test_a_yaml_alias_bomb_in_a_sweep_file_exits_2_in_one_line(tmp_path, capsys):
    path = alias_file(tmp_path, 8)  # 10^9 zeros
    started = time.monotonic()
    status, out, err = cli(capsys, "sweep", str(path), "--out", str(tmp_path / "out"))
    assert time.monotonic() - started < 30
    assert status == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"infer-os: error: {path}")
    assert not (tmp_path / "out").exists()


# -- values that are not numbers or JSON data --------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("axes, extra, field", [
    ({"engine.kv_budget_bytes": [1.0e7, NAN]}, {}, "axes.engine.kv_budget_bytes"),
    ({"engine.kv_budget_bytes": [INF]}, {}, "axes.engine.kv_budget_bytes"),
    ({"engine.kv_budget_bytes": ["1e999"]}, {}, "axes.engine.kv_budget_bytes"),  # -> inf
    ({"policies.tiering": [{"kind": "progressive", "quality_budget_ppl": NAN}]}, {},
     "axes.policies.tiering"),
    ({"engine.kv_budget_bytes": {"low": NAN, "high": 1.0e8, "num": 2}}, {},
     "axes.engine.kv_budget_bytes.low"),
    ({"engine.kv_budget_bytes": {"low": 1.0e7, "high": INF, "num": 2}}, {},
     "axes.engine.kv_budget_bytes.high"),
    ({"engine.kv_budget_bytes": [1.0e7]}, {"baseline": {"engine.kv_budget_bytes": NAN}},
     "baseline.engine.kv_budget_bytes"),
    ({"engine.max_batch": [1]}, {"overrides": {"engine.kv_budget_bytes": -INF}},
     "overrides.engine.kv_budget_bytes"),
])
def test_a_nan_or_infinite_value_is_refused_naming_where(tmp_path, axes, extra, field):
    assert refused(write_sweep(tmp_path, axes, **extra)).field == field


def test_a_nan_axis_value_exits_2_naming_file_and_axis(tmp_path, capsys):
    path = write_sweep(tmp_path, {"engine.kv_budget_bytes": [1.0e7, NAN]})
    status, out, err = cli(capsys, "sweep", str(path), "--out", str(tmp_path / "out"))
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err == f"infer-os: error: {path}: axes.engine.kv_budget_bytes: not a finite number " \
                  "(nan)\n"


def test_a_date_is_a_string_from_yaml_and_refused_from_python(tmp_path):
    path = tmp_path / "dates.yaml"  # YAML 1.1 made these datetime.date, which JSON cannot hash
    path.write_text("name: dates\nbase: quickstart\naxes: {description: [2024-01-01, "
                    "2024-01-02T10:00:00]}\n")
    sweep = load_sweep(path)
    assert [p.values["description"] for p in sweep.points] == ["2024-01-01",
                                                               "2024-01-02T10:00:00"]
    assert len({p.point_id for p in sweep.points}) == 2
    day = datetime.date(2024, 1, 1)  # from a caller building the sweep in Python
    spec = SweepFile(name="s", base="quickstart", axes={"engine.max_batch": [1]},
                     overrides={"description": day})
    with pytest.raises(UserError) as err:
        spec.check(path)
    assert err.value.field == "overrides.description"
    assert err.value.message == ("a YAML date or time (2024-01-01): quote it ('2024-01-01') to "
                                 "give it as a string")


@pytest.mark.parametrize("value, says", [
    (b"hello", "a binary is not a sweep value"),  # !!binary
    ({"a", "b"}, "a set is not a sweep value"),  # !!set
    ({"kind": "fp16", 1: "x"}, "a mapping key is not a string but an int"),  # sort_keys fails
    (10**20, "an integer beyond the 64-bit range"),  # no int64 column holds it
    ([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], "nested more than"),
])
def test_values_that_are_not_plain_json_data_are_refused_naming_the_axis(tmp_path, value, says):
    spec = SweepFile(name="s", base="quickstart", axes={"engine.max_batch": [1, value]})
    with pytest.raises(UserError) as err:
        spec.check(tmp_path / "s.yaml")
    assert err.value.field == "axes.engine.max_batch" and err.value.message.startswith(says)


@pytest.mark.parametrize("text, field", [
    ("axes: {engine.max_batch: [1, 100000000000000000000]}", "axes.engine.max_batch"),
    ("axes: {variant: [[a]]}", "axes.variant"),  # a list is no variant's name
    ("axes: {cost_model: [roofline, roofine]}", "axes.cost_model"),  # a typo ran as roofline
])
def test_special_axes_and_huge_integers_in_a_file_are_refused(tmp_path, text, field):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nbase: quickstart\n{text}\n")
    with pytest.raises(UserError) as err:
        load_sweep(path)
    assert err.value.file == str(path) and err.value.field == field


@pytest.mark.parametrize("extra, axis, field", [
    ({"seed": -1}, None, "seed"),  # random.Random(-1) is Random(1): refused, not aliased
    ({"seed": 2**32}, None, "seed"),  # as a scenario's
    ({"seed": True}, None, "seed"),
    ({"samples": 0}, None, "samples"),
    ({"samples": True}, None, "samples"),
    ({}, {"low": 1, "high": 4, "num": 0}, "axes.engine.max_batch.num"),
    ({}, {"low": 1, "high": 4, "num": MAX_POINTS + 1}, "axes.engine.max_batch.num"),
    ({}, {"low": 1, "high": 4, "step": 0}, "axes.engine.max_batch.step"),
    ({}, {"low": 1, "high": 4, "step": -1}, "axes.engine.max_batch.step"),
    ({}, {"low": True, "high": 4, "step": 1}, "axes.engine.max_batch.low"),
    ({}, {"low": 1, "high": 2**64, "step": 2**60}, "axes.engine.max_batch.high"),
    ({}, {"low": -1.5e308, "high": 1.5e308, "num": 3}, "axes.engine.max_batch"),
    ({"name": "../elsewhere"}, None, "name"),  # the default results folder is sweeps/NAME
])
def test_the_sweeps_own_numbers_are_bounded(tmp_path, extra, axis, field):
    axes = {"engine.max_batch": axis or [1, 2]}
    assert refused(write_sweep(tmp_path, axes, **extra)).field == field


# -- NaN metrics, corrupt log lines and manifests ----------------------------------------------

def nan_throughput(point):
    """``run_point``, with the throughput NaN for max_batch 2 (a run the table cannot hold)."""
    record = run_point(point)
    if point.values["engine.max_batch"] == 2:
        record["metrics"]["throughput_tok_s"] = float("nan")
    return record


def test_a_point_with_nan_metrics_is_a_failed_point_and_the_sweep_goes_on(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"engine.max_batch": [1, 2, 4]}))
    out = tmp_path / "out"
    result = run_sweep(sweep, out, ExecutorSpec("local", num_workers=1), fn=nan_throughput)
    assert (result.num_run, result.num_ok, result.num_failed) == (3, 2, 1)
    rows = {r["engine.max_batch"]: r for r in read_table(out)}
    assert rows[2]["status"] == "failed" and rows[2]["throughput_tok_s"] is None
    assert rows[2]["error"] == "metrics that are not finite numbers: throughput_tok_s=nan"
    assert rows[1]["status"] == rows[4]["status"] == "ok"
    for line in (out / POINTS_FILE).read_text().splitlines():  # strict JSON: no NaN token
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in the log"))
    again = run_sweep(sweep, out, ExecutorSpec("local", num_workers=1), fn=nan_throughput)
    assert again.num_run == 0 and read_manifest(out)["state"] == "complete"  # recorded: done


def test_a_record_json_cannot_hold_is_a_failed_point():
    record = {"point_id": "p", "values": {"a": 1}, "cost_model": "roofline", "status": "ok",
              "error": "", "metrics": {"throughput_tok_s": 1.0, "ttft_p50_s": float("inf"),
                                       "num_failed": True}}
    failed = checked(record)
    assert failed["status"] == "failed" and failed["metrics"] == {}
    assert failed["error"] == ("metrics that are not finite numbers: ttft_p50_s=inf, "
                               "num_failed=True")
    odd = checked({**record, "metrics": {}, "extra": object()})
    assert odd["status"] == "failed" and odd["error"].startswith("the point's record is not JSON")
    assert json.dumps(odd, allow_nan=False) and valid_record(odd)
    assert checked({**record, "metrics": {"throughput_tok_s": 1.0}})["status"] == "ok"


def test_corrupt_log_lines_and_manifest_are_skipped_with_a_warning_and_rerun(tmp_path, capsys):
    path = write_sweep(tmp_path, {"engine.max_batch": [1, 2, 4, 8]})
    out = tmp_path / "out"
    assert cli(capsys, "sweep", str(path), "--out", str(out), "--workers", "1")[0] == 0
    table = read_table(out)
    log = out / POINTS_FILE
    lines = log.read_bytes().split(b"\n")
    record = json.loads(lines[2])
    record["metrics"]["throughput_tok_s"] = "fast"  # a record, but not one append writes
    lines[1] = b'{"point_id": "' + b"\xff" * 4  # not UTF-8, not JSON
    lines[2] = json.dumps(record).encode()
    log.write_bytes(b"\n".join(lines))
    (out / "sweep.json").write_text('{"sweep": "small", "runs": [')  # cut short
    with pytest.raises(UserError) as err:
        read_manifest(out)  # what `infer-os report` reads: one line, how to fix
    assert err.value.file == str(out / "sweep.json") and "rerun the sweep" in err.value.message
    status, stdout, stderr = cli(capsys, "sweep", str(path), "--out", str(out), "--json",
                                 "--workers", "1")
    assert status == 0, stderr
    warnings = [x for x in stderr.splitlines() if x.startswith("infer-os: warning: ")]
    assert warnings == [
        f"infer-os: warning: {log}: 2 corrupt lines skipped and removed (the points run again)",
        f"infer-os: warning: {out / 'sweep.json'}: not JSON (JSONDecodeError); replaced by this "
        "run's manifest (the record of earlier runs is lost)"]
    summary = json.loads(stdout)
    assert (summary["num_skipped"], summary["num_run"], summary["num_ok"]) == (2, 2, 4)
    assert read_table(out) == table and read_manifest(out)["state"] == "complete"
    assert len(log.read_text().splitlines()) == 4  # the corrupt lines are gone
    status, _, stderr = cli(capsys, "sweep", str(path), "--out", str(out))
    assert status == 0 and "warning" not in stderr  # said once


def test_a_results_folder_that_cannot_be_written_exits_2_naming_out(tmp_path, capsys):
    path = write_sweep(tmp_path, {"engine.max_batch": [1]})
    (tmp_path / "file").write_text("")
    status, out, err = cli(capsys, "sweep", str(path), "--out", str(tmp_path / "file"))
    assert status == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == (f"infer-os: error: {tmp_path / 'file'}: --out: cannot use "
                                    "the results folder (it is a file)")


# -- --workers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", ["-1", "0", "10000"])
def test_workers_out_of_range_exit_2_naming_workers(tmp_path, capsys, workers):
    path = write_sweep(tmp_path, {"engine.max_batch": [1]})
    status, out, err = cli(capsys, "sweep", str(path), "--out", str(tmp_path / "out"),
                           "--workers", workers)
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("infer-os: error: --workers: expected 1 to ")
    assert f"not {workers} " in err and not (tmp_path / "out").exists()
    assert ExecutorSpec.parse("local", 1).workers == 1  # the smallest is fine


# -- SIGINT and SIGTERM ------------------------------------------------------------------------

def _procs() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time, state) of every process, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            out[int(entry.name)] = (int(fields[1]), fields[19], fields[0])
    return out


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every process below ``pid`` (children, theirs, ...)."""
    procs, found, todo = _procs(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, start, _) in procs.items():
            if ppid == parent and child not in found:
                found[child] = start
                todo.append(child)
    return found


def running(pids: dict[int, str]) -> list[int]:
    """Those of ``pids`` still running (the same start time; a zombie has ended)."""
    procs = _procs()
    return [p for p, start in pids.items()
            if p in procs and procs[p][1] == start and procs[p][2] != "Z"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_signal_stops_the_workers_writes_the_results_and_exits_128_plus_it(tmp_path, signum,
                                                                             to_group):
    axes = {"policies.tiering": [{"kind": "fp16"}, {"kind": "uniform", "precision": "int8"},
                                 {"kind": "progressive"}],
            "engine.max_batch": [1, 2, 4, 8], "engine.block_tokens": [8, 16, 32]}
    path = write_sweep(tmp_path, axes, overrides={"workload.num_requests": 32})  # 36 points
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "sweep", str(path), "--out",
                             str(out), "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    below: dict[int, str] = {}
    try:
        stdout, stderr = _signal_when_two_are_done(proc, out / POINTS_FILE, signum, to_group,
                                                   below)
    finally:  # a regression must not leave workers running on the machine
        for pid in running(below):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = len((out / POINTS_FILE).read_text().splitlines())
    assert proc.returncode == 128 + signum, stderr
    assert stdout == b"" and b"Traceback" not in stderr
    assert stderr.decode().splitlines()[-1] == (f"infer-os: interrupted: {done} of 36 points "
                                                "done; rerun to resume")
    assert 2 <= done < 36
    manifest = read_manifest(out)
    assert manifest["state"] == "incomplete" and manifest["num_ok"] == done
    assert len(read_table(out)) == done
    assert len(below) >= 3  # the pool's forkserver and its two workers, at least
    deadline = time.monotonic() + 10  # the forkserver ends once it sees the sweep gone
    while running(below) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(below) == []


def _signal_when_two_are_done(proc: subprocess.Popen, log: Path, signum: int, to_group: bool,
                              below: dict[int, str]) -> tuple[bytes, bytes]:
    """Send ``signum`` once two points are logged, noting the processes below the sweep in
    ``below`` first; the sweep's stdout and stderr."""
    deadline = time.monotonic() + TIMEOUT_S
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "sweep ended too soon"
        time.sleep(0.01)
    below.update(descendants(proc.pid))
    if to_group:  # Ctrl-C in a terminal: the whole process group
        os.killpg(proc.pid, signum)
    else:  # `kill PID`: the sweep alone
        os.kill(proc.pid, signum)
    return proc.communicate(timeout=TIMEOUT_S)  # a worker left running holds stderr open
