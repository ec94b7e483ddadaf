"""Ctrl-C (SIGINT) and SIGTERM during ``simulate``, ``measure`` and ``validate``, sent to the
command run as a user runs it (a separate process): one line on stderr, no traceback, exit 130 or
143, and with ``--out`` the runs that finished written, marked incomplete; the run that was going
on is dropped, and no temporary file is left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import scenarios

TIMEOUT_S = 60
# sim-scale with a short variant and one that runs for minutes
TWO_VARIANTS = {"fast": {"workload.num_requests": 100},
                "slow": {"workload.num_requests": 200000}}


def two_variant_scenario(tmp_path: Path) -> Path:
    doc = yaml.safe_load(scenarios.locate("sim-scale").read_text())
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({**doc, "variants": TWO_VARIANTS}))
    return path


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def start():
    """``start(args, ready=False)``: the CLI in its own session (killed at the end of the test
    if still running); ``ready``: through a wrapper that says "ready" on stderr once the
    command's code is imported (when there is no ``--out`` folder to watch)."""
    procs: list[subprocess.Popen] = []

    def launch(args: list[str], ready: bool = False) -> subprocess.Popen:
        cmd = ([sys.executable, "-c", "import sys; from sim.cli.app import main; "
                "print('ready', file=sys.stderr, flush=True); sys.exit(main(sys.argv[1:]))"]
               if ready else [sys.executable, "-m", "sim.cli"])
        # SIGINT as a terminal gives it, even when the suite itself runs in the background
        # of a script (which starts its children with SIGINT ignored, and Python keeps that)
        procs.append(subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True,
                                      preexec_fn=_default_sigint))
        return procs[-1]

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def signal_when_started(proc: subprocess.Popen, out: Path, stem: str, sig: int):
    """Send ``sig`` once the run ``stem`` streams its trace into ``out`` (its temporary file
    exists); returns (exit status, stdout, stderr lines)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not (out.is_dir() and any(p.name.startswith(f".trace.{stem}.json.")
                                    for p in out.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, stdout.decode(), stderr.decode().splitlines()


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def run_files(*stems: str) -> list[str]:
    return [f"{kind}.{stem}.{ext}" for stem in stems
            for kind, ext in (("kv", "csv"), ("requests", "csv"), ("trace", "json"))]


def test_ctrl_c_in_simulate_writes_the_finished_runs_marked_incomplete(tmp_path, start):
    out = tmp_path / "out"
    proc = start(["simulate", str(two_variant_scenario(tmp_path)), "--out", str(out)])
    status, stdout, err = signal_when_started(proc, out, "slow.roofline", signal.SIGINT)
    assert status == 130
    assert err == [f"infer-os: interrupted: wrote 1 of 2 runs to {out}"]
    assert stdout == ""
    assert names(out) == sorted(["results.json", *run_files("fast.roofline")])
    doc = json.loads((out / "results.json").read_text())
    assert doc["incomplete"] == {"runs_written": 1, "runs_planned": 2, "reason": "interrupted"}
    assert [r["variant"] for r in doc["runs"]] == ["fast"]
    assert doc["runs"][0]["metrics"]["num_completed"] == 100
    rows = (out / "requests.fast.roofline.csv").read_text().splitlines()
    assert len(rows) == 1 + 100
    json.loads((out / "trace.fast.roofline.json").read_text())  # whole


def test_sigterm_in_simulate_json_prints_nothing_on_stdout_and_exits_143(tmp_path, start):
    out = tmp_path / "out"
    proc = start(["simulate", str(two_variant_scenario(tmp_path)), "--json", "--out",
                  str(out)])
    status, stdout, err = signal_when_started(proc, out, "slow.roofline", signal.SIGTERM)
    assert (status, stdout) == (143, "")
    assert err == [f"infer-os: interrupted: wrote 1 of 2 runs to {out}"]
    assert json.loads((out / "results.json").read_text())["incomplete"]["runs_written"] == 1


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_without_out_an_interrupt_is_one_line(tmp_path, start, sig, status):
    proc = start(["simulate", str(two_variant_scenario(tmp_path)), "--variant", "slow"],
                 ready=True)
    assert proc.stderr.readline() == b"ready\n"
    time.sleep(1.0)  # parsed and running (the run lasts minutes)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == status
    assert (stdout, stderr) == (b"", b"infer-os: interrupted\n")


@pytest.fixture(scope="module")
def torch_scenario(tmp_path_factory, write_llama, write_scenario) -> Path:
    """A tiny random Llama on the CPU: a one-request variant, then one that runs long."""
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("torch")
    return write_scenario(folder, write_llama(folder / "llama"), "interrupted", variants={
        "fast": {"workload.num_requests": 1},
        "slow": {"workload.num_requests": 5000}})


def test_ctrl_c_in_measure_keeps_the_finished_variant_and_drops_the_running_one(
        tmp_path, start, torch_scenario):
    out = tmp_path / "out"
    proc = start(["measure", str(torch_scenario), "--backend", "torch", "--out", str(out)])
    status, stdout, err = signal_when_started(proc, out, "slow.measured", signal.SIGINT)
    assert (status, stdout) == (130, "")
    assert err == [f"infer-os: interrupted: wrote 1 of 2 runs to {out}"]
    assert names(out) == sorted(["results.json", *run_files("fast.measured")])
    doc = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["cost_model"]) for r in doc["runs"]] == [("fast", None)]
    assert doc["incomplete"]["runs_planned"] == 2


def test_sigterm_in_validate_keeps_both_sides_of_the_finished_variant(tmp_path, start,
                                                                      torch_scenario):
    out = tmp_path / "out"
    proc = start(["validate", str(torch_scenario), "--backend", "torch", "--cost-model",
                  "roofline", "--out", str(out)])
    status, stdout, err = signal_when_started(proc, out, "slow.measured", signal.SIGTERM)
    assert (status, stdout) == (143, "")
    assert err == [f"infer-os: interrupted: wrote 2 of 4 runs to {out}"]
    assert names(out) == sorted(["validation.json",
                                 *run_files("fast.measured", "fast.roofline")])
    doc = json.loads((out / "validation.json").read_text())
    assert [r["variant"] for r in doc["runs"]] == ["fast"]
    assert doc["incomplete"] == {"runs_written": 2, "runs_planned": 4,
                                 "reason": "interrupted"}
