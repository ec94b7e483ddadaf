"""User policies on the command line: every refusal is exit 2 with one line naming the file, the
field and the cause; a policy that breaks a run is exit 1 naming the policy, the step and the
exception, with every request accounted for in what ``--out`` wrote.

Plugins come from ``tests/plugin_policies.py`` (by import path) or from a fake distribution
whose ``entry_points.txt`` registers names in the group ``infer_os.policies``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.config import policy_registry

PLUGINS = "tests.plugin_policies"


@pytest.fixture
def scenario(tmp_path, base_scenario, scenario_file) -> Path:
    """gpt2 on h200, 4 requests of 128 + 128 tokens, re-tiering every 4 decode steps."""
    data = base_scenario(engine={"max_batch": 2, "tiering_interval_steps": 4})
    return scenario_file(tmp_path, data)


@pytest.fixture
def register(tmp_path, monkeypatch):
    """``register(name, {entry: target})``: a fake installed distribution ``name`` 1.0 whose
    entry points in ``infer_os.policies`` are the given ones (in this process)."""
    site = tmp_path / "site"

    def make(dist: str, entries: dict[str, str]) -> None:
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            "[infer_os.policies]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
        policy_registry.refresh()

    monkeypatch.syspath_prepend(str(site))
    yield make
    monkeypatch.undo()
    policy_registry.refresh()


def run_cli(capsys, *args: str) -> tuple[int, list[str]]:
    """Exit status and stderr's lines of ``infer-os ARGS`` run in this process (stdout is then
    in ``capsys.stdout``)."""
    status = main(list(args))
    captured = capsys.readouterr()
    capsys.stdout = captured.out
    return status, captured.err.strip().splitlines()


def tiering(kind: str, **params) -> str:
    return "policies.tiering=" + json.dumps({"kind": kind, **params})


@pytest.mark.parametrize("spec, field, message", [
    ({"kind": "no path:"}, "policies.tiering.kind", "'no path:' is not an import path"),
    ({"kind": "tests.missing_module:X"}, "policies.tiering.kind",
     "cannot import module 'tests.missing_module' for policy 'tests.missing_module:X': "
     "ModuleNotFoundError: No module named 'tests.missing_module'"),
    ({"kind": "tests.plugin_broken:X"}, "policies.tiering.kind",
     "RuntimeError: this module is broken on purpose"),
    ({"kind": f"{PLUGINS}:Missing"}, "policies.tiering.kind",
     f"module '{PLUGINS}' has no 'Missing'"),
    ({"kind": f"{PLUGINS}:NotADataclass"}, "policies.tiering.kind",
     "is not a policy: a policy is a frozen dataclass"),
    ({"kind": f"{PLUGINS}:NotFrozen"}, "policies.tiering.kind", "the dataclass is not frozen"),
    ({"kind": f"{PLUGINS}:NoKind"}, "policies.tiering.kind", "it needs a field `kind`"),
    ({"kind": f"{PLUGINS}:MismatchedFamily"}, "policies.tiering.kind",
     "it states family 'speculation' but its decide takes a TieringObservation"),
    ({"kind": f"{PLUGINS}:ShadowingTiering"}, "policies.tiering.kind",
     "has kind 'fp16', the name of a built-in policy (policies.tiering:Fp16Tiering)"),
    ({"kind": f"{PLUGINS}:KeepOldest", "bogus": 1}, "policies.tiering.bogus",
     "unknown parameter 'bogus' of policy 'keep-oldest' (parameters: keep, pressure_cap)"),
    ({"kind": f"{PLUGINS}:KeepOldest", "keep": "many"}, "policies.tiering.keep",
     "policy 'keep-oldest': Input should be a valid integer"),
    ({"kind": f"{PLUGINS}:KeepOldest", "keep": True}, "policies.tiering.keep",
     "expected a number, got True"),
    ({"kind": f"{PLUGINS}:KeepOldest", "pressure_cap": float("nan")},
     "policies.tiering.pressure_cap", "Input should be a finite number"),
    ({"kind": "no-such-policy"}, "policies.tiering.kind",
     "unknown policy kind 'no-such-policy' (tiering policies: fp16, uniform"),
])
def test_a_refused_policy_is_exit_2_with_one_line_naming_file_and_field(
        capsys, scenario, spec, field, message):
    data = yaml.safe_load(scenario.read_text())
    data["policies"]["tiering"] = spec
    scenario.write_text(yaml.safe_dump(data))
    status, lines = run_cli(capsys, "simulate", str(scenario))
    assert status == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"infer-os: error: {scenario}: {field}: "), lines[0]
    assert message in lines[0]


def test_a_policy_under_another_familys_key_is_refused(capsys, scenario):
    status, lines = run_cli(capsys, "simulate", str(scenario), "--set",
                            f"policies.speculation={{kind: '{PLUGINS}:KeepOldest'}}")
    assert status == 2 and len(lines) == 1
    assert lines[0].endswith(f"policies.speculation.kind: '{PLUGINS}:KeepOldest' is a tiering "
                             "policy, not a speculation one")


def test_a_registered_name_works_and_the_class_family_may_be_stated(capsys, scenario, register):
    register("acme-policies", {"keep-oldest": f"{PLUGINS}:KeepOldest",
                               "stated": f"{PLUGINS}:StatedFamily"})
    status, _ = run_cli(capsys, "simulate", str(scenario), "--json", "--set",
                        "policies.tiering={kind: keep-oldest, keep: 2}",
                        "--set", "policies.speculation={kind: stated}",
                        "--set", "speculation.draft_source=ngram")
    assert status == 0
    by_name = json.loads(capsys.stdout)["runs"][0]["metrics"]
    status_path = run_cli(capsys, "simulate", str(scenario), "--json",
                          "--set", tiering(f"{PLUGINS}:KeepOldest", keep=2))[0]
    by_path = json.loads(capsys.stdout)["runs"][0]["metrics"]
    assert status_path == 0
    assert by_name == by_path  # one class, two names
    assert by_name["kv_memory_saved_frac"] > 0 and by_name["num_completed"] == 4


@pytest.mark.parametrize("entries, message", [
    ({"fp16": f"{PLUGINS}:KeepOldest"},
     "policy name 'fp16' is registered by acme-policies 1.0 (tests.plugin_policies:KeepOldest) "
     "and is a built-in (policies.tiering:Fp16Tiering): a registered name may not shadow a "
     "built-in one"),
    ({"keeper": f"{PLUGINS}:KeepOldest"},
     "entry point 'keeper' (tests.plugin_policies:KeepOldest, acme-policies 1.0) names a class "
     "whose kind is 'keep-oldest': the registered name must be the class's kind"),
    ({"raising": "tests.missing_module:RaisingTiering"},
     "cannot import module 'tests.missing_module'"),
])
def test_a_bad_entry_point_is_refused_naming_both_sides(capsys, scenario, register, entries,
                                                        message):
    register("acme-policies", entries)
    (name,) = entries
    status, lines = run_cli(capsys, "simulate", str(scenario), "--set", tiering(name))
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"infer-os: error: {scenario}: policies.tiering.kind: ")
    assert message in lines[0]


def test_two_packages_registering_one_name_are_both_named(capsys, scenario, register):
    register("acme-policies", {"keep-oldest": f"{PLUGINS}:KeepOldest"})
    register("other-policies", {"keep-oldest": f"{PLUGINS}:KeepOldest"})
    status, lines = run_cli(capsys, "simulate", str(scenario), "--set", tiering("keep-oldest"))
    assert status == 2 and len(lines) == 1
    assert "registered by acme-policies 1.0" in lines[0]
    assert "registered by other-policies 1.0" in lines[0]


def test_list_shows_plugins_with_their_package_and_the_unusable_ones(capsys, register):
    register("acme-policies", {"keep-oldest": f"{PLUGINS}:KeepOldest",
                               "fp16": f"{PLUGINS}:KeepOldest"})
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "keep-oldest" in out and "keep: int = 1, pressure_cap: float = 1.0" in out
    assert f"from acme-policies 1.0 ({PLUGINS}:KeepOldest)" in out
    assert "unusable: fp16 [acme-policies 1.0" in out and "may not shadow" in out
    assert "uniform            precision: Literal['int8', 'int4', 'int2'] = 'int4'" in out


@pytest.mark.parametrize("family, kind, says", [
    ("tiering", f"{PLUGINS}:RaisingTiering",
     "tiering policy 'raising' raised ZeroDivisionError: planted bug (at engine step "),
    ("tiering", f"{PLUGINS}:InfeasibleTiering",
     "tiering policy 'infeasible': new blocks cannot be written OFFLOADED (at engine step 1,"),
    ("speculation", f"{PLUGINS}:NoneSpeculation",
     "speculation policy 'none-spec' returned NoneType, not a SpecDecision (at engine step "),
])
def test_a_policy_that_breaks_a_run_is_exit_1_and_every_request_is_accounted_for(
        capsys, tmp_path, scenario, family, kind, says):
    out = tmp_path / "out"
    status, lines = run_cli(capsys, "simulate", str(scenario), "--out", str(out), "--set",
                            f"policies.{family}={{kind: '{kind}'}}",
                            "--set", "speculation.draft_source=ngram")
    assert status == 1
    (error,) = [line for line in lines if line.startswith("infer-os: error:")]
    assert error.startswith("infer-os: error: run default, roofline ended early: " + says)
    assert "\n" not in error and "second line" not in error
    doc = json.loads((out / "results.json").read_text())
    assert doc["runs"][0]["error"] in error
    with (out / "requests.default.roofline.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        assert row["status"] in ("completed", "failed")
        assert row["status"] == "completed" or row["reason"] == doc["runs"][0]["error"]
    assert any(row["status"] == "failed" for row in rows)


def test_in_a_fresh_process_a_broken_import_is_one_line_without_traceback(scenario, repo_root):
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.run([sys.executable, "-m", "sim.cli", "simulate", str(scenario), "--set",
                           tiering("tests.plugin_broken:X")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "RuntimeError: this module is broken on purpose" in proc.stderr


def test_a_class_that_says_nothing_of_its_family_takes_the_scenario_keys(capsys, scenario):
    status, _ = run_cli(capsys, "simulate", str(scenario), "--json", "--set",
                        f"policies.buffers={{kind: '{PLUGINS}:AnyFamily'}}")
    assert status == 0
    assert json.loads(capsys.stdout)["runs"][0]["metrics"]["num_completed"] == 4
    # under a key whose decisions it cannot make, the run ends at its first answer
    status, lines = run_cli(capsys, "simulate", str(scenario), "--set",
                            f"policies.tiering={{kind: '{PLUGINS}:AnyFamily'}}")
    assert status == 1
    assert "tiering policy 'any-family' raised AttributeError" in lines[-1]
