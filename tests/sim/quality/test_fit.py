"""Fitting the quality model to measured perplexity: the fit, the fitted profile in a scenario,
and the pipeline end to end on a tiny random model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import scenarios
from policies import Precision
from sim.config.quality_profile import bundled_quality_profiles
from sim.config.scenario import QualityConfig, resolve_runs
from sim.errors import UserError
from sim.quality.fit import (
    QualityPass,
    QualityRun,
    attention_mix,
    block_mix,
    charged_mix,
    charged_of,
    fit_penalties,
    fit_runs,
    nnls,
    predict,
)
from sim.quality.model import penalties, request_delta_ppl
from sim.run.runner import run_scenario

F, I8, I4, I2, OFF, EV = (Precision.FP16, Precision.INT8, Precision.INT4, Precision.INT2,
                          Precision.OFFLOADED, Precision.EVICTED)


def _pass(shares, precisions, num_scored) -> QualityPass:
    return QualityPass(np.array(shares, dtype=float), np.array(precisions, dtype=np.uint8),
                       num_scored)


def test_mixes_weight_passes_by_scored_tokens_and_pool_offloaded_with_evicted():
    passes = [_pass([0.5, 0.3, 0.2], [F, I4, EV], 1),
              _pass([0.25, 0.75], [I8, OFF], 3),
              _pass([1.0], [I2], 0)]  # scores nothing: does not count
    assert attention_mix(passes) == pytest.approx(
        {"fp16": 0.125, "int8": 0.1875, "int4": 0.075, "int2": 0.0, "missing": 0.6125})
    assert block_mix(passes) == pytest.approx(
        {"fp16": 1 / 12, "int8": 0.375, "int4": 1 / 12, "int2": 0.0, "missing": 11 / 24})


def test_prediction_goes_through_the_simulators_penalties():
    # placeholders: int4 0.1, missing 3.0 per unit of attention
    mix = {"fp16": 0.4, "int8": 0.0, "int4": 0.5, "int2": 0.0, "missing": 0.1}
    assert predict(mix, QualityConfig()) == pytest.approx(0.35)


def test_int2_is_charged_by_its_share_of_the_blocks_and_int4_by_its_attention():
    # the two oldest of 8 blocks drew 1 % of the attention
    shares = np.array([0.005, 0.005, 0.015, 0.025, 0.05, 0.2, 0.3, 0.4])
    table = penalties(QualityConfig())  # placeholders: int4 0.1, int2 1.0 per unit
    assert request_delta_ppl(shares, np.array([I2, I2] + [F] * 6, dtype=np.uint8),
                             table) == pytest.approx(2 / 8 * 1.0)
    assert request_delta_ppl(shares, np.array([I4, I4] + [F] * 6, dtype=np.uint8),
                             table) == pytest.approx(0.01 * 0.1)
    # a run's charged mix holds the same, from its passes or from its two stored mixes, and
    # the prediction over it is the scored-token-weighted mean of the per-pass estimates
    passes = [_pass(shares, [I2, I2] + [F] * 6, 3), _pass([0.5, 0.3, 0.2], [I2, F, EV], 1)]
    mix = charged_mix(passes)
    assert mix == pytest.approx(charged_of(attention_mix(passes), block_mix(passes)))
    per_pass = [request_delta_ppl(p.shares, p.precisions, table) for p in passes]
    assert predict(mix, QualityConfig()) == pytest.approx((3 * per_pass[0] + per_pass[1]) / 4)


def test_nnls_clamps_what_unconstrained_least_squares_makes_negative():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([1.0, -1.0, 0.0])
    assert np.linalg.lstsq(a, b, rcond=None)[0] == pytest.approx([1.0, -1.0])
    assert nnls(a, b) == pytest.approx([0.5, 0.0])


def test_fit_recovers_known_penalties_from_noisy_runs():
    true = QualityConfig(int8_delta_ppl={"value": 0.02, "source": "t"},
                         int4_delta_ppl={"value": 0.4, "source": "t"},
                         int2_delta_ppl={"value": 12.0, "source": "t"},
                         missing_delta_ppl={"value": 2.5, "source": "t"})
    rng = np.random.default_rng(7)
    mixes = [dict(zip(("fp16", "int8", "int4", "int2", "missing"), rng.dirichlet(np.ones(5))))
             for _ in range(40)]
    measured = [predict(m, true) * (1 + rng.normal(0, 0.01)) for m in mixes]  # 1 % noise
    fit = fit_penalties(mixes, measured)
    assert fit["int2"] == pytest.approx(12.0, rel=0.02)
    assert fit["missing"] == pytest.approx(2.5, rel=0.05)
    assert fit["int4"] == pytest.approx(0.4, abs=0.1)
    assert 0 <= fit["int8"] < 0.1
    # a precision no run holds attention at cannot be fitted: it comes out 0, never negative
    only_int4 = [{**m, "int2": 0.0, "fp16": m["fp16"] + m["int2"]} for m in mixes[:5]]
    assert fit_penalties(only_int4, measured[:5])["int2"] == 0.0


def test_penalties_held_fixed_are_taken_off_each_runs_delta_before_the_rest_are_fitted():
    """A prior's INT4 penalty held at its value: a run that mixes INT4 with evictions leaves
    the evictions their own part of its delta-PPL, exactly (no run holds INT4 alone)."""
    mixes = [{"fp16": 0.5, "int8": 0.0, "int4": 0.3, "int2": 0.0, "missing": 0.2},
             {"fp16": 0.2, "int8": 0.0, "int4": 0.4, "int2": 0.4, "missing": 0.0}]
    measured = [0.3 * 0.5 + 0.2 * 6.0, 0.4 * 0.5 + 0.4 * 10.0]
    fit = fit_penalties(mixes, measured, fixed={"int4": 0.5, "int8": 0.01})
    assert fit == pytest.approx({"int8": 0.01, "int4": 0.5, "int2": 10.0, "missing": 6.0})
    # held at another value, the free penalties absorb the difference: they are fitted, not set
    assert fit_penalties(mixes, measured, fixed={"int4": 0.0, "int8": 0.0})["missing"] > 6.5
    # every penalty held: nothing is fitted, nothing fails
    assert fit_penalties(mixes, measured, fixed=dict.fromkeys(("int8", "int4", "int2",
                                                               "missing"), 1.0))["int2"] == 1.0


def _profile(tmp_path: Path, **pens) -> Path:
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({
        "base_ppl": 20.0, "command": "test", "date": "2026-01-01",
        "penalties": {"int8": 0.01, "int4": 0.5, "int2": 9.0, "missing": 4.0, **pens}}))
    return path


def test_a_scenario_takes_its_quality_from_the_profile_but_its_own_values_win(
        tmp_path, base_scenario, scenario_file):
    _profile(tmp_path)
    own = {"value": 0.7, "source": "the scenario's own"}
    # a relative path is found beside the scenario file, wherever the command runs
    scn = resolve_runs(scenario_file(tmp_path, base_scenario(
        quality={"profile": "q.yaml", "int4_delta_ppl": own})), [])[0][1]
    q = scn.quality
    assert (q.base_ppl, q.int8_delta_ppl.value, q.int4_delta_ppl.value, q.int2_delta_ppl.value,
            q.missing_delta_ppl.value) == (20.0, 0.01, 0.7, 9.0, 4.0)
    assert "fitted" in q.missing_delta_ppl.source and "test" in q.missing_delta_ppl.source


@pytest.mark.parametrize("quality, expected", [
    ({"profile": "no-such-model"}, "unknown quality profile 'no-such-model'"),
    ({"profile": "missing/q.yaml"}, "cannot read quality profile"),
])
def test_a_bad_profile_is_a_user_error_naming_file_and_field(tmp_path, quality, expected,
                                                             base_scenario, scenario_file):
    path = scenario_file(tmp_path, base_scenario(quality=quality))
    with pytest.raises(UserError) as info:
        resolve_runs(path, [])
    assert info.value.field == "quality.profile"
    assert info.value.file == str(path)
    assert expected in str(info.value)


def test_a_profile_without_its_penalties_is_rejected(tmp_path, base_scenario, scenario_file):
    prof = _profile(tmp_path, int2="high")
    path = scenario_file(tmp_path, base_scenario(variants={"v": {"quality.profile": str(prof)}}))
    with pytest.raises(UserError) as info:
        resolve_runs(path, [])
    assert info.value.field == "variants.v -> quality.profile"


def test_the_bundled_smollm2_scenario_simulates_with_the_fitted_profile(repo_root):
    assert "smollm2-135m" in bundled_quality_profiles()
    path = scenarios.locate("smollm2-cpu")
    scn = dict(resolve_runs(path, []))["int4-kv"]
    assert scn.quality.profile == "smollm2-135m"
    profile = repo_root / "sim" / "config" / "profiles" / "quality" / "smollm2-135m.yaml"
    fitted = yaml.safe_load(profile.read_text())
    assert scn.quality.base_ppl == fitted["base_ppl"]
    out = run_scenario(scn, "int4-kv", "roofline", path.parent)
    # every block at INT4: the estimate at a full pass is the fitted INT4 penalty itself
    assert out.metrics["quality"]["delta_ppl_max"] == pytest.approx(fitted["penalties"]["int4"])


torch = pytest.importorskip("torch")

from adapters.decoding.perplexity import quality_run, tiered_nll  # noqa: E402
from adapters.model.transformer import ModelConfig, Transformer  # noqa: E402
from policies import Fp16Tiering, UniformTiering  # noqa: E402
from policies.tiering_baselines import StreamingTiering  # noqa: E402

CFG = ModelConfig("llama", num_layers=2, hidden=64, num_heads=4, num_kv_heads=2, head_dim=16,
                  ffn_hidden=128, vocab=64, tied_embeddings=False, norm_eps=1e-5,
                  max_positions=4096)
KW = dict(block_tokens=16, group=16, chunk=32, eval_from=64)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    phrase = torch.randint(0, 64, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    return model, [(phrase * 10)[:256], (phrase * 10)[40:296]]


def test_recorded_passes_are_the_states_the_retierers_signal_was_computed_from(tiny):
    model, windows = tiny
    got = tiered_nll(model, windows[0], StreamingTiering(sink_tokens=16, window_tokens=64), **KW)
    assert len(got.quality_passes) == len(got.quality_samples) - 1 == 8  # 256 tokens / 32
    assert sum(p.num_scored for p in got.quality_passes) == got.num_scored
    from_passes = [predict(charged_mix([p]), QualityConfig()) for p in got.quality_passes]
    assert from_passes == pytest.approx(list(got.quality_samples[1:]), abs=1e-12)
    assert max(from_passes) > 0  # streaming evicted attended blocks


def test_pipeline_measures_and_predicts_each_policy(tiny):
    model, windows = tiny
    runs = [quality_run(name, model, windows, policy, **KW) for name, policy in (
        ("fp16", Fp16Tiering()), ("int4", UniformTiering(precision="int4")),
        ("streaming", StreamingTiering(sink_tokens=16, window_tokens=64)))]
    fp16, int4, streaming = runs
    assert fp16.num_scored == int4.num_scored == 2 * (256 - 65)
    assert fp16.attention_mix["fp16"] == pytest.approx(1.0)
    assert int4.attention_mix["int4"] == pytest.approx(1.0)
    assert 0 < streaming.attention_mix["missing"] < 1
    cfg, checked = fit_runs(runs, fp16, ["int4", "streaming"], "test")
    assert [(c.name, c.is_train) for c in checked] == [
        ("fp16", False), ("int4", True), ("streaming", True)]
    assert all(np.isfinite(c.measured_delta_ppl) and c.predicted_delta_ppl >= 0 for c in checked)
    # int4 and missing attention never share a run here: each penalty fits its run exactly
    row = {c.name: c for c in checked}
    for name in ("int4", "streaming"):
        assert row[name].predicted_delta_ppl == pytest.approx(
            max(row[name].measured_delta_ppl, 0.0), abs=1e-6)
    assert cfg.base_ppl == fp16.ppl
    with pytest.raises(ValueError, match="no run named 'int2'"):
        fit_runs(runs, fp16, ["int2"], "test")


def _run(name: str, ppl: float, **mix: float) -> QualityRun:
    full = {k: mix.get(k, 0.0) for k in ("int8", "int4", "int2", "missing")}
    full["fp16"] = 1.0 - sum(full.values())
    return QualityRun(name, ppl, 1000, full, full)


def test_a_fit_on_a_set_of_texts_reads_each_text_relative_to_its_own_base():
    """A second text whose delta-PPL is the first's scaled by its base leaves the fit as it was;
    one that pays more per unit of its base moves it; its held-out runs never enter it."""
    a = [_run("fp16", 40.0), _run("int4", 44.0, int4=1.0), _run("h2o", 42.0, missing=0.25),
         _run("int2", 55.0, int2=1.0), _run("kivi", 50.0, int2=0.5)]
    half = [_run(r.name, r.ppl / 2, **{k: v for k, v in r.attention_mix.items() if k != "fp16"})
            for r in a]
    alone, _ = fit_runs(a, a[0], ["int4", "h2o", "int2"], "t")
    same, checked = fit_runs(a, a[0], ["int4", "h2o", "int2"], "t", [(half, half[0])])
    for name in ("int4_delta_ppl", "int2_delta_ppl", "missing_delta_ppl"):
        assert getattr(same, name).value == pytest.approx(getattr(alone, name).value)
    assert same.base_ppl == 40.0 and [c.name for c in checked] == [r.name for r in a]
    # the second text pays twice as much for eviction per unit of its base: the penalty moves
    worse = [*half[:2], _run("h2o", 20.0 + 2 * 1.0, missing=0.25), *half[3:]]
    moved, _ = fit_runs(a, a[0], ["int4", "h2o", "int2"], "t", [(worse, worse[0])])
    assert alone.missing_delta_ppl.value == pytest.approx(8.0)
    assert moved.missing_delta_ppl.value == pytest.approx(12.0)  # the mean of 8 and 16
    assert moved.int2_delta_ppl.value == pytest.approx(alone.int2_delta_ppl.value)
    # a held-out run of the second text does not enter the fit
    wild = [*half[:4], _run("kivi", 99.0, int2=0.5)]
    kept, _ = fit_runs(a, a[0], ["int4", "h2o", "int2"], "t", [(wild, wild[0])])
    assert kept.int2_delta_ppl.value == pytest.approx(alone.int2_delta_ppl.value)
