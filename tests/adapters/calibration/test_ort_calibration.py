"""``calibrate --backend ort`` and ``validate --backend ort`` on a tiny model: the ort executor's
own passes are timed and fitted, and a validation predicts its KV memory within 2 % under a tiering
policy, with the measured acceptance replayed under speculation."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from sim.cli import main  # noqa: E402
from sim.costs.calibrated import load_calibration  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, write_llama):
    root = tmp_path_factory.mktemp("ortcal")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFER_OS_CACHE", str(root / "cache"))
        model = write_llama(root / "model", 0, layers=4)
        profile = root / "profile.yaml"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["calibrate", "--backend", "ort", "--model", str(model), "--threads",
                         "1", "--block-tokens", "16", "--kv-quant-group", "16", "--budget-s",
                         "6", "--out", str(profile)]) == 0
        yield root, model, profile


def test_the_profile_is_the_ort_executors(tiny):
    _, _, path = tiny
    profile = load_calibration(path)
    assert profile.backend == "ort" and "onnxruntime" in profile.machine
    assert "CPUExecutionProvider" in profile.device
    assert profile.fit.num_points >= 24
    coef = profile.coefficients
    assert sum(coef.values()) > 0  # steps cost something


def test_validate_with_ort_predicts_kv_within_2_percent(tiny, tmp_path, capsys,
                                                        write_scenario):
    root, model, profile = tiny
    path = write_scenario(tmp_path, model, "tiny-ort-validate", seed=5,
                          engine={"max_batch": 2, "block_tokens": 16, "kv_quant_group": 16},
                          backend={"device": "cpu", "dtype": "float32", "kv_dtype": "float16",
                                   "threads": 1},
                          policies__tiering={"kind": "uniform", "precision": "int4"})
    doc = yaml.safe_load(path.read_text())
    doc["variants"] = {"int4": {},
                       "spec": {"policies.speculation": {"kind": "fixed", "k": 2},
                                "speculation.draft_source": "ngram"}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFER_OS_CACHE", str(root / "cache"))
        assert main(["validate", str(path), "--backend", "ort", "--profile", str(profile),
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "ort"
    for run in out["runs"]:
        assert run["measured"]["num_completed"] == run["predicted"]["num_completed"] == 5
        assert abs(run["relative_error"]["kv_peak_bytes"]) <= 0.02
    spec = out["runs"][1]
    assert "acceptance_replay" in spec["conditioned_on"]
