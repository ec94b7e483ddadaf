"""The worked third-party policy package (``docs/examples/policy-pack``, distribution
``infer-os-example-policies``) used the way its README says, from the command line in a separate
process: ``list`` shows its two policies with their parameters and package; its scenario and
sweep run (the sweep identically on a local pool and on a Dask LocalCluster, whose workers import
the plugin); a plugin policy runs for real on the torch and ort backends, under ``validate`` and
``report``.  The package must be installed (``pip install ./docs/examples/policy-pack``), which
the first fixture checks."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sim.sweep.results import read_table
from tests.sim.report import pages

TIMEOUT_S = 300
REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "docs" / "examples" / "policy-pack"
DIST = "infer-os-example-policies"
RECENCY = {"kind": "recency", "recent_blocks": 1}  # the newest block at FP16, older at INT8


@pytest.fixture(autouse=True, scope="module")
def pack_version() -> str:
    """The installed package's version; a clear failure (not a skip) when it is missing."""
    hint = f"the example policy package is not installed: pip install ./{PACK.relative_to(REPO)}"
    if importlib.util.find_spec("example_policies") is None:
        pytest.fail(hint, pytrace=False)
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:  # importable, but no entry points
        pytest.fail(hint, pytrace=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """``$INFER_OS_CACHE`` of every command here: ONNX exports stay out of the user's cache."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cli(cache):
    """``cli(*args) -> CompletedProcess``: ``infer-os ARGS`` in a separate process (text)."""
    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "sim.cli", *map(str, args)], cwd=REPO,
                              capture_output=True, text=True, timeout=TIMEOUT_S,
                              env={**os.environ, "INFER_OS_CACHE": str(cache)})
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc
    return run


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _int8_peak(kv_csv: Path) -> int:
    """The most bytes at INT8 in a run's KV timeline (``--out``'s ``kv.*.csv``)."""
    return max(int(r["int8"]) for r in _csv(kv_csv))


# -- infer-os list -----------------------------------------------------------------------------

def _policies(listing: str) -> dict[str, dict[str, tuple[str, str | None]]]:
    """The ``policies`` section of ``infer-os list``: family -> name -> (parameters, the
    ``from PACKAGE VERSION (module:Class)`` line or None for a built-in).  The section ends at
    the next heading (lower-case words); unindented lines with punctuation continue a wrapped
    parameter list."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", listing).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("policies"))
    out: dict[str, dict[str, tuple[str, str | None]]] = {}
    family = name = None
    for line in lines[start + 1:]:
        if re.fullmatch(r"[a-z][a-z ]*", line):  # the next section's heading
            break
        if not line.startswith(" "):  # a long parameter list wrapped at the console's width
            params, source = out[family][name]
            out[family][name] = (f"{params} {line}", source)
        elif m := re.fullmatch(r"  (\w+)", line):
            family = m[1]
            out[family] = {}
        elif m := re.fullmatch(r" {4}(\S+) +(.*)", line):
            name = m[1]
            out[family][name] = (m[2], None)
        elif m := re.fullmatch(r" {5,}(from .*)", line):
            out[family][name] = (out[family][name][0], m[1])
    return out


def test_list_shows_the_plugins_with_their_parameters_and_package(cli, pack_version):
    proc = cli("list")
    assert proc.returncode == 0, proc.stderr
    listed = _policies(proc.stdout)
    assert {"tiering", "buffers", "speculation", "scheduling"} <= set(listed)
    source = f"from {DIST} {pack_version} (example_policies.{{}})"
    assert listed["tiering"]["recency"] == (
        "recent_blocks: int = 4, int4_pressure: float = 0.7",
        source.format("tiering:RecencyTiering"))
    assert listed["speculation"]["backoff"] == (
        "increase: int = 1, backoff: float = 0.5, probe_every: int = 16",
        source.format("speculation:BackoffSpeculation"))
    assert "backoff" not in listed["tiering"] and "recency" not in listed["speculation"]
    assert listed["tiering"]["fp16"] == ("-", None)  # a built-in: no package line
    assert "unusable" not in proc.stdout


# -- simulate ----------------------------------------------------------------------------------

def test_the_pack_scenario_simulates_every_variant(cli):
    proc = cli("simulate", PACK / "scenario.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON object on stdout
    runs = {r["variant"]: r["metrics"] for r in doc["runs"]}
    assert list(runs) == ["baseline", "int8-kv", "recency", "recency-by-path", "spec-dynamic",
                          "backoff"]
    for variant, m in runs.items():
        assert m["num_completed"] == m["num_requests"] == 3 and m["num_failed"] == 0, variant
    base, recency = runs["baseline"], runs["recency"]
    assert runs["recency-by-path"] == recency  # one class, by entry point and by import path
    assert recency["kv_memory_saved_frac"] > 0 == base["kv_memory_saved_frac"]
    assert recency["kv_peak_bytes"] < base["kv_peak_bytes"]
    assert recency["kv_moves"]["requantize"] > 0 and not base["kv_moves"]
    assert recency["kv_bytes_by_precision"]["int8"] > 0 == base["kv_bytes_by_precision"]["int8"]
    backoff = runs["backoff"]
    assert base["spec_acceptance_rate"] is None  # no drafting
    assert 0 < backoff["spec_acceptance_rate"] <= 1  # it proposed draft tokens, some accepted
    assert backoff["output_tokens"] == base["output_tokens"]
    # accepted drafts: the same tokens in fewer decode steps
    assert backoff["engine"]["num_decode_steps"] < base["engine"]["num_decode_steps"]


# -- sweep -------------------------------------------------------------------------------------

def test_the_pack_sweep_gives_identical_tables_on_a_local_pool_and_on_dask(cli, tmp_path):
    tables = {}
    for executor in ("local", "dask"):
        out = tmp_path / executor
        proc = cli("sweep", PACK / "sweep.yaml", "--executor", executor, "--workers", "2",
                   "--out", out, "--json")
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert (summary["num_points"], summary["num_ok"], summary["num_failed"],
                summary["num_lost"]) == (8, 8, 0, 0), summary
        tables[executor] = read_table(out)
    assert "LocalCluster" in summary["executor"]  # the last one: Dask's worker processes
    table = tables["local"]
    assert table == tables["dask"]
    # the plugin's parameters reached it: a smaller FP16 window and INT4 save more KV
    saved = {(r["policies.tiering.recent_blocks"], r["policies.tiering.int4_pressure"]):
             r["kv_memory_saved_frac"] for r in table}
    assert saved[(8, 1.0)] == saved[(8, 0.0)] == 0  # 8 blocks hold these requests whole
    for pressure in (1.0, 0.0):
        window = [saved[(n, pressure)] for n in (8, 2, 1, 0)]
        assert window == sorted(window) and window[-1] > 0, window
    for n in (2, 1, 0):
        assert saved[(n, 0.0)] > saved[(n, 1.0)]  # INT4 at any pressure beats INT8


# -- real backends -----------------------------------------------------------------------------

def test_the_plugin_measured_on_torch_and_reported(cli, tmp_path):
    out = tmp_path / "out"
    proc = cli("measure", PACK / "scenario.yaml", "--backend", "torch", "--variant", "recency",
               "--json", "--out", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    [run] = doc["runs"]
    m = run["metrics"]
    assert doc["backend"] == "torch" and run["variant"] == "recency"
    assert m["measured"]["device"]
    assert m["num_completed"] == m["num_requests"] == 3 and m["num_failed"] == 0
    assert m["kv_memory_saved_frac"] > 0 and m["kv_moves"]["requantize"] > 0
    assert _int8_peak(out / "kv.recency.measured.csv") > 0  # the executor's true INT8 bytes

    proc = cli("report", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "report.html")
    text = (out / "report.html").read_text()
    assert pages.title(text) == "infer-os measure --backend torch: policy-pack"
    [row] = pages.rows(text)[1:]
    assert row[:2] == ["recency", "measured"] and row[-1] == "3/0"
    kv = pages.by_title(text)["recency (measured): device KV"]
    assert "int8" in {trace["name"] for trace in kv["data"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, write_llama, write_scenario) -> Path:
    """A tiny random Llama (2 layers) and its 5-request scenario: variants ``fp16`` and
    ``recency`` (the plugin, newest block at FP16), a tiering pass every 4 steps."""
    root = tmp_path_factory.mktemp("tiny")
    model = write_llama(root / "model", 0, layers=2)
    return write_scenario(root, model, "tiny-pack", engine__tiering_interval_steps=4,
                          variants={"fp16": {}, "recency": {"policies.tiering": RECENCY}})


def test_the_plugin_on_the_ort_backend_demotes_blocks(cli, tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    proc = cli("measure", tiny, "--backend", "ort", "--json", "--out", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    runs = {r["variant"]: r["metrics"] for r in doc["runs"]}
    assert doc["backend"] == "ort" and list(runs) == ["fp16", "recency"]
    for variant, m in runs.items():
        assert m["num_completed"] == 5 and m["num_failed"] == 0, variant
        assert m["measured"]["device"].endswith("CPUExecutionProvider")
    assert runs["recency"]["kv_moves"]["requantize"] > 0 and not runs["fp16"]["kv_moves"]
    assert _int8_peak(out / "kv.recency.measured.csv") > 0
    assert _int8_peak(out / "kv.fp16.measured.csv") == 0


def test_validate_runs_the_plugin_on_both_sides(cli, tiny, tmp_path):
    out = tmp_path / "out"
    proc = cli("validate", tiny, "--backend", "torch", "--variant", "recency", "--cost-model",
               "roofline", "--no-speed-check", "--out", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "validation.json").read_text())
    assert doc["backend"] == "torch" and doc["scenario"] == "tiny-pack"
    [run] = doc["runs"]
    assert (run["variant"], run["cost_model"]) == ("recency", "roofline") and "error" not in run
    predicted, measured = run["predicted"], run["measured"]
    for m in (predicted, measured):
        assert m["num_completed"] == 5 and m["num_failed"] == 0
    # the policy saw the same blocks on both sides and demoted the same number of them
    assert predicted["kv_moves"] == measured["kv_moves"] and measured["kv_moves"]["requantize"]
    assert _int8_peak(out / "kv.recency.measured.csv") > 0
    assert _int8_peak(out / "kv.recency.roofline.csv") > 0
