"""A user's policy that raises mid-run on the torch backend: the measured run ends with exit 1
naming the policy and the step, and ``--out`` accounts for every request."""

from __future__ import annotations

import csv
import json

import pytest

from sim.cli import main

pytest.importorskip("torch")


def test_a_raising_policy_ends_a_measured_run_with_every_request_accounted_for(
        tmp_path, capsys, write_llama, write_scenario):
    path = write_scenario(tmp_path, write_llama(tmp_path / "llama"), "raising-torch",
                          engine__tiering_interval_steps=2)
    out = tmp_path / "out"
    status = main(["measure", str(path), "--backend", "torch", "--out", str(out), "--set",
                   "policies.tiering={kind: 'tests.plugin_policies:RaisingTiering', "
                   "after_step: 4}"])
    err = capsys.readouterr().err
    assert status == 1
    assert ("infer-os: error: run default, measured ended early: tiering policy 'raising' "
            "raised ZeroDivisionError: planted bug (at engine step ") in err
    doc = json.loads((out / "results.json").read_text())
    reason = doc["runs"][0]["error"]
    assert "decode step 4," in reason
    with (out / "requests.default.measured.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and all(r["status"] in ("completed", "failed") for r in rows)
    assert all(r["reason"] == reason for r in rows if r["status"] == "failed")
    assert sum(r["status"] == "failed" for r in rows) >= 1
