"""The ``infer-os`` command line as a user runs it: a separate process, its stdout, stderr, exit
status and the files it writes (docs/architecture.md#the-json-contract).

Processes are started together where the tests allow it (each takes ~0.6 s, mostly imports), so
that the file stays fast on a two-core machine.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import scenarios

QUICKSTART = scenarios.locate("quickstart")
TIMEOUT_S = 120


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sim.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, out, err


def quickstart_config() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


# -- list ----------------------------------------------------------------------------------------

def test_list_names_scenarios_policies_backends_profiles_and_models():
    script = Path(sys.executable).parent / "infer-os"  # the console script itself
    proc = subprocess.run([str(script), "list"], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    words = set(proc.stdout.replace(",", " ").split())
    expected = {"quickstart",  # scenarios
                "fp16", "uniform", "exact", "off", "fixed", "single", "static",  # policy kinds
                "tiering", "buffers", "speculation", "scheduling",  # policy families
                "sim",  # the cost-model backend
                "cpu-2core-avx512", "h200", "ryzen-ai-9-hx-370",  # hardware profiles
                "gpt2", "smollm2-135m", "llama-2-7b", "mistral-7b", "llama-3.1-8b"}  # presets
    assert expected <= words, expected - words


# -- simulate --json -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quickstart_json_twice() -> list[tuple[int, bytes, bytes]]:
    """``simulate quickstart --json`` in two processes with different hash seeds (so that any
    dependence on set or dict-of-str iteration order would show)."""
    procs = [start("simulate", "quickstart", "--json", env={"PYTHONHASHSEED": seed})
             for seed in ("0", "4242")]
    return [finish(p) for p in procs]


SUMMARY_KEYS = {"mean", "p50", "p90", "p99"}


def test_simulate_json_prints_one_object_with_the_contract_keys(quickstart_json_twice):
    rc, out, err = quickstart_json_twice[0]
    assert rc == 0, err.decode()
    doc = json.loads(out)  # raises on anything besides one JSON value ("Extra data")
    assert isinstance(doc, dict)
    assert doc["scenario"] == "quickstart"
    assert doc["backend"] == "sim"
    cfg = quickstart_config()
    expected_runs = [(v, cm) for v in cfg["variants"] for cm in cfg["cost_models"]]
    assert [(r["variant"], r["cost_model"]) for r in doc["runs"]] == expected_runs
    num_requests = cfg["workload"]["num_requests"]
    for run in doc["runs"]:
        m = run["metrics"]
        assert m["num_requests"] == num_requests
        assert (m["num_completed"], m["num_failed"]) == (num_requests, 0)
        assert isinstance(m["output_tokens"], int) and m["output_tokens"] > 0
        assert m["makespan_s"] > 0
        assert m["throughput_tok_s"] > 0
        for key in ("ttft_s", "tpot_s", "e2e_s"):
            stats = m[key]
            assert set(stats) >= SUMMARY_KEYS, key
            assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"], key
            assert stats["mean"] > 0, key
        assert m["e2e_s"]["p50"] >= m["ttft_s"]["p50"]
        assert isinstance(m["kv_peak_bytes"], int) and m["kv_peak_bytes"] > 0
        assert isinstance(m["kv_fp16_equiv_peak_bytes"], int)
        assert m["kv_peak_bytes"] <= m["kv_fp16_equiv_peak_bytes"]
        assert {"fp16", "int8", "int4"} <= set(m["kv_bytes_by_precision"])
        assert sum(m["kv_bytes_by_precision"].values()) == m["kv_peak_bytes"]
        assert m["spec_acceptance_rate"] is None  # speculation is off in quickstart
        assert m["devices"], "no devices"
        for name, dev in m["devices"].items():
            assert 0 <= dev["busy_frac"] <= 1, name
    # the same requests in both variants: the same tokens out
    assert len({r["metrics"]["output_tokens"] for r in doc["runs"]}) == 1
    # the INT8 variant holds its KV in INT8 blocks, and they are smaller than FP16 ones
    by_variant = {r["variant"]: r["metrics"] for r in doc["runs"]}
    int8 = by_variant["int8-kv"]
    assert int8["kv_bytes_by_precision"]["fp16"] == 0
    assert int8["kv_bytes_by_precision"]["int8"] == int8["kv_peak_bytes"]
    assert int8["kv_peak_bytes"] < int8["kv_fp16_equiv_peak_bytes"]


def test_simulate_json_is_byte_identical_across_processes(quickstart_json_twice):
    (rc1, out1, err1), (rc2, out2, err2) = quickstart_json_twice
    assert rc1 == rc2 == 0, (err1, err2)
    assert out1 == out2


# -- bad input -----------------------------------------------------------------------------------

def _unknown_key(tmp: Path) -> tuple[list[str], list[str]]:
    cfg = quickstart_config()
    cfg["engine"]["max_batchh"] = 2
    path = tmp / "unknown-key.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [str(path)], [str(path), "engine.max_batchh"]


def _yaml_syntax(tmp: Path) -> tuple[list[str], list[str]]:
    path = tmp / "broken.yaml"
    path.write_text("name: broken\nmodel: {spec: gpt2\nhardware: [h200\n")
    return [str(path)], [str(path), "line"]


def _override(item: str, *expected: str):
    return lambda tmp: (["quickstart", "--set", item], [str(QUICKSTART), *expected])


BAD_INPUTS = {
    "unknown-key-in-file": _unknown_key,
    "yaml-syntax-error": _yaml_syntax,
    "negative-poisson-rate": _override("workload.arrival={kind: poisson, rate_per_s: -1}",
                                       "workload.arrival", "rate_per_s"),
    "unknown-policy-kind": _override("policies.tiering={kind: no-such-kind}",
                                     "policies", "tiering", "no-such-kind"),
    "unknown-model": _override("model.spec=no-such-model", "model.spec", "no-such-model"),
    "unknown-hardware-profile": _override("hardware=no-such-profile", "hardware",
                                          "no-such-profile"),
    "malformed-set": lambda tmp: (["quickstart", "--set", "engine.max_batch"],
                                  ["--set", "engine.max_batch"]),
    "unknown-scenario": lambda tmp: (["no-such-scenario"], ["SCENARIO", "no-such-scenario"]),
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory) -> dict[str, tuple[int, str, str, list[str]]]:
    tmp = tmp_path_factory.mktemp("bad-input")
    cases = {name: make(tmp) for name, make in BAD_INPUTS.items()}
    procs = {name: start("simulate", *args, "--json") for name, (args, _) in cases.items()}
    out = {}
    for name, proc in procs.items():
        rc, stdout, stderr = finish(proc)
        out[name] = (rc, stdout.decode(), stderr.decode(), cases[name][1])
    return out


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_naming_file_and_field(bad_input_runs, case):
    rc, stdout, stderr, expected = bad_input_runs[case]
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    assert stdout == ""  # nothing for a --json consumer to misread
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])


# -- --out ---------------------------------------------------------------------------------------

def test_out_writes_results_request_csvs_and_chrome_traces(tmp_path):
    # quickstart moved onto the APU with prefill + attention on the iGPU and FFN on the NPU, so
    # that the timeline has more than one device
    out_dir = tmp_path / "results"
    rc, stdout, stderr = finish(start(
        "simulate", "quickstart", "--set", "hardware=ryzen-ai-9-hx-370",
        "--set", "policies.scheduling={kind: static, prefill: igpu, decode_attention: igpu, "
                 "decode_ffn: npu}", "--json", "--out", str(out_dir)))
    assert rc == 0, stderr.decode()
    doc = json.loads((out_dir / "results.json").read_text())
    assert doc == json.loads(stdout)
    num_requests = quickstart_config()["workload"]["num_requests"]
    assert len(doc["runs"]) >= 2
    for run in doc["runs"]:
        stem = f"{run['variant']}.{run['cost_model']}"
        with (out_dir / f"requests.{stem}.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["request_id"]) for r in rows] == list(range(num_requests))
        assert {r["status"] for r in rows} == {"completed"}
        assert sum(int(r["generated_tokens"]) for r in rows) == run["metrics"]["output_tokens"]
        assert all(float(r["arrival_s"]) <= float(r["first_token_s"]) <= float(r["finish_s"])
                   for r in rows)

        trace = json.loads((out_dir / f"trace.{stem}.json").read_text())
        events = trace["traceEvents"]
        threads = {e["tid"]: e["args"]["name"] for e in events
                   if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == 1}
        assert sorted(threads.values()) == ["igpu", "npu"]  # one thread per device
        assert sorted(threads.values()) == sorted(run["metrics"]["devices"])
        spans: dict[int, list[tuple[float, float]]] = {tid: [] for tid in threads}
        for e in events:
            if e["ph"] == "X" and e["pid"] == 1:
                spans[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
        for tid, device_spans in spans.items():
            assert device_spans, threads[tid]
            device_spans.sort()
            # a device runs one thing at a time (1e-2 us of slack for the rounding to 1e-3 us)
            assert all(a[1] <= b[0] + 1e-2 for a, b in zip(device_spans, device_spans[1:]))
        # one track per request, on the second process
        assert {e["tid"] for e in events if e["ph"] == "X" and e["pid"] == 2} == \
            set(range(num_requests))


def test_a_backend_whose_package_is_missing_exits_3(monkeypatch, capsys):
    """`measure --backend torch` where torch is not installed: exit 3 naming the package."""
    import importlib.metadata as md

    from sim.cli import main
    from sim.run import backends as executor

    class Broken:
        name = "torch"

        def load(self):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(executor, "entry_points",
                        lambda group: [Broken()] if group == "infer_os.backends" else
                        md.entry_points(group=group))
    assert main(["measure", "quickstart", "--backend", "torch"]) == 3
    err = capsys.readouterr().err.strip()
    assert "infer-os[torch]" in err and "\n" not in err
