"""Calibration (``infer-os calibrate``) and the calibrated cost model: the fit recovers known
costs, a tiny model calibrates and validates end to end (KV memory predicted within 2 %), profiles
round-trip and are cached, and bad profiles are one clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from sim.cli import main
from sim.costs.calibration_fit import fit_relative, fit_with_holdout, nnls
from sim.run.metrics import metric_value


def test_nnls_matches_an_unconstrained_solution_when_that_is_feasible():
    rng = np.random.default_rng(0)
    A = rng.uniform(0.1, 1.0, (40, 5))
    x_true = np.array([0.5, 2.0, 0.0, 1.5, 0.1])
    x = nnls(A, A @ x_true)
    assert np.allclose(x, x_true, atol=1e-9)


def test_nnls_keeps_coefficients_non_negative():
    rng = np.random.default_rng(1)
    A = rng.uniform(0.1, 1.0, (30, 4))
    b = A @ np.array([1.0, -3.0, 2.0, 0.5]) + 5.0
    x = nnls(A, b)
    assert (x >= 0).all()
    # no non-negative vector does better: check against random feasible ones
    best = np.linalg.norm(A @ x - b)
    for _ in range(500):
        assert np.linalg.norm(A @ rng.uniform(0, 5, 4) - b) >= best - 1e-9


def test_relative_fit_recovers_step_costs_from_noisy_timings():
    """Synthetic steps: 10 ms per forward + 0.2 ms per layer-row + 1 ns per byte, timings with
    2 % noise; the fit finds the costs within 10 % and predicts held-out steps within 5 %."""
    rng = np.random.default_rng(2)
    n = 60
    F = np.column_stack([np.ones(n), rng.integers(1, 8, n) * 30.0,
                         rng.uniform(1e6, 5e7, n), np.zeros(n)])
    truth = np.array([1e-2, 2e-4, 1e-9, 0.0])
    t = (F @ truth) * rng.normal(1.0, 0.02, n)
    coef = fit_relative(F, t)
    assert np.allclose(coef[:3], truth[:3], rtol=0.1)
    _, stats = fit_with_holdout(F, t)
    assert stats["holdout_median_abs_error"] < 0.05 and stats["num_points"] == n


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def scenario(tiny, write_scenario):
    """``scenario(tiering) -> path``: 4 random-text requests of 2 closed-loop users on the tiny
    model, FP16 KV, one thread, under ``tiering``."""
    def make(tiering: dict) -> str:
        folder = tiny / f"scn-{tiering.get('precision', tiering['kind'])}"
        folder.mkdir(exist_ok=True)
        return str(write_scenario(
            folder, tiny / "model", "tiny-validate", seed=5,
            workload__arrival={"kind": "closed", "concurrency": 2}, workload__num_requests=4,
            workload__prompt_tokens={"kind": "uniform", "low": 20, "high": 90},
            workload__output_tokens={"kind": "uniform", "low": 10, "high": 40},
            engine__max_batch=2, backend__kv_dtype="float16", backend__threads=1,
            policies__tiering=tiering))
    return make


def test_calibrate_writes_a_deterministic_profile(tiny, tmp_path, capsys):
    from sim.costs.calibrated import dump_calibration, load_calibration

    out = tmp_path / "p.yaml"
    assert main(["calibrate", "--backend", "torch", "--model", str(tiny / "model"),
                 "--threads", "1", "--block-tokens", "16", "--kv-quant-group", "16",
                 "--budget-s", "8", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    profile = load_calibration(out)
    assert profile.backend == "torch" and profile.threads == 1 and profile.fit.num_points >= 24
    assert dump_calibration(profile) == out.read_text()  # stable on a round trip
    coef = profile.coefficients
    assert coef["forward"] + coef["layer"] > 0  # a forward pass costs something
    # quantizing is timed in whole steps for every quantized precision, whatever the budget
    assert set(profile.quantize_s_per_value) == {"int8", "int4", "int2"}
    assert all(v > 0 for v in profile.quantize_s_per_value.values())
    # the arena's shift: by the byte, and by the pass besides
    assert profile.shift_bytes_per_s > 0 and profile.shift_s_per_pass >= 0
    # and the blocks after a check's first, from a pass of several: never dearer than a fill
    assert set(profile.pass_quantize_s_per_value) == {"int8", "int4", "int2"}
    assert all(0 <= v <= profile.quantize_s_per_value[k]
               for k, v in profile.pass_quantize_s_per_value.items())
    # the fixed costs the shadow's draft and retier kinds are priced with
    assert profile.retier_s_per_check + profile.retier_s_per_row > 0
    assert profile.retier_warm_s_per_check + profile.retier_warm_s_per_row > 0
    assert profile.draft_ngram_s_per_token > 0
    from adapters.kv import fused
    assert profile.layout.batch == ("fused" if fused.available() else "padded")


def test_calibrate_warns_when_its_fit_reads_like_a_busy_machine():
    """Fits of a quiet machine read 2.3-4.6 % here, those of a busy one 5.6-8.1 %: the second
    get a warning that names the error and what to do; the first none."""
    from adapters.calibration.calibrate import busy_warning

    assert busy_warning(0.023) is None and busy_warning(0.046) is None
    text = busy_warning(0.081)
    assert "8.1%" in text and "calibrate again" in text


def test_validate_calibrates_once_then_predicts_kv_memory_within_2_percent(
        scenario, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INFER_OS_CACHE", str(tmp_path / "cache"))
    for tiering in ({"kind": "fp16"}, {"kind": "uniform", "precision": "int4"}):
        path = scenario(tiering)
        assert main(["validate", path, "--backend", "torch", "--json"]) == 0
        captured = capsys.readouterr()
        [run] = json.loads(captured.out)["runs"]
        assert run["cost_model"] == "calibrated"
        p, m = run["predicted"], run["measured"]
        assert p["num_completed"] == m["num_completed"] == 4
        assert abs(run["relative_error"]["kv_peak_bytes"]) <= 0.02
        for name in ("throughput_tok_s", "ttft_s.p50", "tpot_s.p50"):
            assert np.isfinite(run["relative_error"][name])
    profiles = list((tmp_path / "cache" / "calibration").glob("*.yaml"))
    assert len(profiles) == 1  # the second scenario reused the first one's calibration


def test_a_bad_profile_is_one_clear_error(scenario, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: infer-os-calibration\nbackend: torch\n")
    path = scenario({"kind": "fp16"})
    assert main(["validate", path, "--backend", "torch", "--profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "Traceback" not in err


def test_validate_takes_the_measured_acceptance_and_only_that(scenario, tiny_profile, tmp_path,
                                                              capsys):
    profile = tiny_profile
    doc = yaml.safe_load(open(scenario({"kind": "fp16"})))
    doc["variants"] = {"off": {},
                       "spec": {"policies.speculation": {"kind": "fixed", "k": 2},
                                "speculation.draft_source": "layer-skip",
                                "speculation.draft_layers": 2, "speculation.alpha": 0.99}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path), "--backend", "torch", "--profile", str(profile),
                 "--speed-check", "--json"]) == 0
    off, spec = json.loads(capsys.readouterr().out)["runs"]
    # the machine's speed, re-timed around the measured run, and nothing else when not drafting
    assert set(off["conditioned_on"]) == {"machine_speed"}
    assert off["conditioned_on"]["machine_speed"] > 0
    alpha = spec["conditioned_on"]["speculation.alpha"]
    assert 0.0 <= alpha < 0.99  # the scenario's 0.99 was replaced by what was measured
    assert "acceptance_replay" in spec["conditioned_on"]
    # each request's measured accepted counts are replayed: same acceptance, same KV
    p, m = spec["predicted"], spec["measured"]
    assert abs(p["spec_acceptance_rate"] - m["spec_acceptance_rate"]) < 0.02
    assert abs(spec["relative_error"]["kv_peak_bytes"]) <= 0.02


def test_the_speed_check_compares_with_the_steps_the_calibration_timed(scenario, tiny_profile):
    """The profile keeps the reference steps as calibrated; the check divides by those, not by
    the fit's predictions (which would carry the fit's error at those steps into every run)."""
    from pathlib import Path

    from adapters.calibration.calibrate import speed_check
    from sim.config.scenario import resolve_runs
    from sim.costs.calibrated import load_calibration

    profile = load_calibration(tiny_profile)
    assert len(profile.reference_s) == 6 and min(profile.reference_s) > 0
    path = Path(scenario({"kind": "fp16"}))
    [(_, scn)] = resolve_runs(path, [])
    # reference steps of 1,000 s each: this machine is then over 10^4 times faster
    slow = profile.model_copy(update={"reference_s": [1000.0] * 6})
    assert speed_check(slow, scn, path.parent) < 1e-2
    # without them (an older profile) the check falls back on the fitted model
    assert 0 < speed_check(profile.model_copy(update={"reference_s": []}), scn, path.parent)


def test_the_speed_check_times_the_same_steps_every_time(tiny):
    """A speed check's bench is kept warm for a whole validate run: each check still times the
    steps the calibration timed (the same contexts), never the longer ones earlier checks left."""
    from adapters.calibration import bench
    from adapters.calibration.calibrate import _reference_bench

    sb = _reference_bench("torch", str(tiny / "model"), "float32", "cpu", "float16", 16, 16)
    with torch.inference_mode():  # as the speed check runs them
        first, _ = bench.reference_seconds(sb)
        again, _ = bench.reference_seconds(sb)
    assert len(first) == 6 and all(np.array_equal(a, b) for a, b in zip(first, again))


def test_without_the_speed_check_nothing_is_taken_from_the_measurement(scenario, tiny_profile,
                                                                       capsys):
    """No speed check unless asked for (``--speed-check``); ``--no-speed-check`` is the same."""
    profile = tiny_profile
    path = scenario({"kind": "fp16"})
    for flags in ([], ["--no-speed-check"]):
        assert main(["validate", path, "--backend", "torch", "--profile", str(profile),
                     *flags, "--json"]) == 0
        [run] = json.loads(capsys.readouterr().out)["runs"]
        assert run["conditioned_on"] == {}


def test_validate_predicts_kivi_memory_when_a_prefill_delays_a_demotion(scenario, tiny_profile,
                                                                         tmp_path, capsys):
    # A (80 prompt tokens) is prefilled alone; B arrives meanwhile and is prefilled next, before
    # A's first decode step.  KIVI demotes A's old blocks when A joins, but the executor applies
    # tiers to the requests of a step only: after B's prefill it still holds A's 80 tokens at
    # FP16 (the peak).  A simulator that counted the demotion at once was 20 % low here.
    doc = yaml.safe_load(open(scenario({"kind": "kivi", "residual_tokens": 16})))
    (tmp_path / "trace.csv").write_text("arrival_s,prompt_tokens,output_tokens\n"
                                        "0,80,10\n0.0001,20,10\n")
    doc["workload"]["arrival"] = {"kind": "trace", "path": "trace.csv"}
    path = tmp_path / "kivi.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path), "--backend", "torch", "--profile", str(tiny_profile),
                 "--no-speed-check", "--json"]) == 0
    [run] = json.loads(capsys.readouterr().out)["runs"]
    assert run["same_prefill_batches"]  # [A], then [B]: the same schedule in both runs
    # 4 layers x 2 (K, V) x 2 KV heads x 16 dims x 2 bytes = 512 bytes a token
    assert run["measured"]["kv_peak_bytes"] == (80 + 20) * 512
    assert run["relative_error"]["kv_peak_bytes"] == 0.0


def test_validate_shadows_every_measured_step_and_writes_steps_csv(scenario, tiny_profile,
                                                                   tmp_path, capsys):
    """The calibrated model predicts each step the measured run took: one CSV row per step
    (as many decode rows as the measured run's decode steps), a summary per step kind."""
    import csv

    path = scenario({"kind": "uniform", "precision": "int8"})
    out = tmp_path / "out"
    assert main(["validate", path, "--backend", "torch", "--profile", str(tiny_profile),
                 "--no-speed-check", "--json", "--out", str(out)]) == 0
    [run] = json.loads(capsys.readouterr().out)["runs"]
    shadow = run["shadow"]
    engine = run["engine_state"]["measured"]["engine"]
    assert shadow["decode"]["steps"] == engine["num_decode_steps"]
    assert shadow["prefill"]["steps"] == engine["num_prefill_steps"]
    assert shadow["step"]["steps"] == engine["num_decode_steps"] + engine["num_prefill_steps"]
    for kind in ("prefill", "decode", "step"):
        assert shadow[kind]["p10"] <= shadow[kind]["median"] <= shadow[kind]["p90"]
    with (out / f"steps.{run['variant']}.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == shadow["step"]["steps"]
    decode = [r for r in rows if r["phase"] == "decode"]
    assert all(float(r["measured_decode_s"]) > 0 and float(r["predicted_decode_s"]) > 0
               for r in decode)
    assert all(int(r["kv_dequant_values"]) > 0 for r in decode[1:])  # INT8 blocks are read
    # every step checks its rows' tiers, and the model prices that check
    assert all(float(r["measured_retier_s"]) > 0 and float(r["predicted_retier_s"]) > 0
               for r in rows)
    # the steps that move blocks (here: INT8 blocks quantized as they fill; every prefill, whose
    # prompts fill blocks) are read apart from those that only check the tiers
    moves = [r for r in rows if float(r["predicted_retier_work_s"]) > 0]
    assert {r["step"] for r in rows if r["phase"] == "prefill"} <= {r["step"] for r in moves}
    assert 0 < len(moves) < len(rows) / 2
    assert shadow["retier: moves"]["steps"] == len(moves)
    assert shadow["retier: checks only"]["steps"] == len(rows) - len(moves)
    assert "draft: n-gram" not in shadow and "draft" not in shadow


def test_the_shadow_pools_the_steps_of_every_repeat(scenario, tiny_profile, tmp_path, capsys):
    """``--repeats 2``: the shadow's summary and ``steps.{variant}.csv`` hold the steps of both
    measured runs, each row with its repeat (a slow minute of the machine in one repeat is one
    of the samples, not the whole of them); the schedule replay stays with the first."""
    import csv

    path = scenario({"kind": "uniform", "precision": "int8"})
    out = tmp_path / "out"
    assert main(["validate", path, "--backend", "torch", "--profile", str(tiny_profile),
                 "--no-speed-check", "--json", "--out", str(out), "--repeats", "2"]) == 0
    [run] = json.loads(capsys.readouterr().out)["runs"]
    engine = run["engine_state"]["measured"]["engine"]
    per_run = engine["num_decode_steps"] + engine["num_prefill_steps"]
    assert run["repeats"]["decode_steps"]["measured"] == [engine["num_decode_steps"]] * 2
    assert run["shadow"]["step"]["steps"] == 2 * per_run
    with (out / f"steps.{run['variant']}.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["repeat"] for r in rows] == ["1"] * per_run + ["2"] * per_run
    assert [r["step"] for r in rows] == [str(i) for i in range(per_run)] * 2
    # the same plans, measured twice: the two repeats' times are two measurements
    first, second = rows[:per_run], rows[per_run:]
    assert [r["predicted_step_s"] for r in first] == [r["predicted_step_s"] for r in second]
    assert [r["measured_step_s"] for r in first] != [r["measured_step_s"] for r in second]
    assert "schedule_fixed" in run
    # every step has its twin in the other repeat: the noise floor reads all of them
    step = run["shadow"]["step"]
    assert step["floor_steps"] == 2 * per_run and 0 < step["floor"] < 1


def test_the_shadow_prices_ngram_lookups_by_the_tokens_they_examined(tiny, write_scenario,
                                                                     tiny_profile, tmp_path,
                                                                     capsys):
    """n-gram drafts: each measured step reports what its lookups examined, the shadow's plan
    carries it, and the predicted draft time follows it (not the rows' whole contexts)."""
    import csv

    folder = tiny / "scn-ngram"
    folder.mkdir(exist_ok=True)
    path = str(write_scenario(
        folder, tiny / "model", "tiny-ngram", seed=5,
        workload__arrival={"kind": "closed", "concurrency": 2}, workload__num_requests=4,
        workload__prompt_tokens={"kind": "uniform", "low": 20, "high": 90},
        workload__output_tokens={"kind": "uniform", "low": 10, "high": 40},
        engine__max_batch=2, engine__max_draft_len=3, backend__kv_dtype="float16",
        backend__threads=1, speculation__draft_source="ngram",
        policies__speculation={"kind": "fixed", "k": 3}))
    out = tmp_path / "out"
    assert main(["validate", path, "--backend", "torch", "--profile", str(tiny_profile),
                 "--no-speed-check", "--json", "--out", str(out)]) == 0
    [run] = json.loads(capsys.readouterr().out)["runs"]
    with (out / f"steps.{run['variant']}.csv").open() as f:
        drafts = [r for r in csv.DictReader(f) if r["measured_draft_s"]]
    assert len(drafts) == run["shadow"]["draft"]["steps"] > 5
    assert "draft: n-gram" not in run["shadow"]  # all of the kind: said once, as "draft"
    scans = [float(r["draft_scan_tokens"]) for r in drafts]
    assert all(s > 0 for s in scans) and len(set(scans)) > 1
    # the slices compared are among the starts examined; a row finds an n-gram or does not
    assert all(0 <= float(r["draft_compares"]) <= float(r["draft_scan_tokens"]) for r in drafts)
    assert all(0 <= float(r["draft_hits"]) <= int(r["batch"]) for r in drafts)
    assert any(float(r["draft_hits"]) > 0 for r in drafts)
    by_scan = sorted(zip(scans, (float(r["predicted_draft_s"]) for r in drafts),
                         (int(r["batch"]) for r in drafts)))
    same_rows = [(s, p) for s, p, b in by_scan if b == by_scan[-1][2]]
    assert same_rows[-1][1] > same_rows[0][1]  # more tokens examined, more time predicted


def test_validate_repeats_measures_n_times_and_judges_noise_or_model(scenario, tiny_profile,
                                                                     capsys):
    """--repeats 3: the measured median and spread of every metric, the error against the
    median, and a verdict per metric that agrees with where the prediction falls."""
    path = scenario({"kind": "fp16"})
    assert main(["validate", path, "--backend", "torch", "--profile", str(tiny_profile),
                 "--no-speed-check", "--repeats", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["repeats"] == 3
    [run] = doc["runs"]
    rep = run["repeats"]
    assert rep["n"] == 3
    for name in ("throughput_tok_s", "ttft_s.p50", "tpot_s.p50", "kv_peak_bytes"):
        lo, med, hi = rep["min"][name], rep["median"][name], rep["max"][name]
        assert lo <= med <= hi
        p = metric_value(run["predicted"], name)
        assert run["relative_error"][name] == pytest.approx((p - med) / med, rel=1e-9)
        assert rep["verdict"][name] == ("noise" if lo <= p <= hi else "model")
    assert rep["min"]["kv_peak_bytes"] == rep["max"]["kv_peak_bytes"]  # memory: no noise
    # no speculation: every repeat and the prediction take one decode step per output token
    steps = rep["decode_steps"]
    assert steps["measured"] == [steps["predicted"]] * 3 and steps["predicted"] > 0
    assert main(["validate", path, "--backend", "torch", "--repeats", "0"]) == 2


def test_schedule_replay_equals_the_prediction_when_the_schedules_agree(scenario, tiny_profile,
                                                                         capsys):
    """The measured schedule replayed with predicted step times: where the free-running
    prediction took the same steps (same admissions, no speculation), both give the same
    timing, so the schedule's share of the error is ~0; the decomposition is reported."""
    path = scenario({"kind": "fp16"})
    assert main(["validate", path, "--backend", "torch", "--profile", str(tiny_profile),
                 "--no-speed-check", "--json"]) == 0
    [run] = json.loads(capsys.readouterr().out)["runs"]
    fixed = run["schedule_fixed"]
    assert set(fixed["relative_error"]) >= {"throughput_tok_s", "ttft_s.p50", "tpot_s.p50"}
    # no timing-dependent policy here: both runs admit the same requests together
    assert run["same_prefill_batches"]
    for name in ("throughput_tok_s", "makespan_s", "ttft_s.p50", "e2e_s.p50"):
        assert abs(fixed["schedule_share"][name]) < 0.01, (name, fixed)
