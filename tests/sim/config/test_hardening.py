"""Hostile scenarios and profiles (issue 15): every size bounded, every float finite, no setting
silently ignored, and every error reported as one ``FILE: FIELD: message`` line, blamed where it
comes from (the base scenario, ``--set`` or a variant); never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.cli import main
from sim.config.hardware import PROFILE_DIR, load_profile
from sim.config.scenario import parse_set, resolve_runs
from sim.costs.calibrated import load_calibration
from sim.engine.workload import read_trace
from sim.errors import UserError
from tests.sim.config.hostile import BASE_YAML, TRACE_HEADER, refused, scenario_text


# -- 1. sizes: every one bounded, in the schema ---------------------------------------------------
@pytest.mark.parametrize("override, field, message", [
    ("workload.num_requests=1e9", "workload.num_requests",
     "Input should be less than or equal to 10000000 (got 1000000000.0)"),
    ("workload.num_requests=0", "workload.num_requests",
     "Input should be greater than or equal to 1 (got 0)"),
    ("engine.max_draft_len=1e9", "engine.max_draft_len",
     "Input should be less than or equal to 256 (got 1000000000.0)"),
    ("workload.prompt_tokens={kind: fixed, value: 1e20}", "workload.prompt_tokens.value",
     "Unable to parse input string as an integer, exceeded maximum size (got 1e+20)"),
    ("workload.output_tokens={kind: uniform, low: 1, high: 20000000}",
     "workload.output_tokens.high",
     "Input should be less than or equal to 16777216 (got 20000000)"),
    ("seed=-1", "seed", "Input should be greater than or equal to 0 (got -1)"),
    ("seed=4294967296", "seed",
     "Input should be less than or equal to 4294967295 (got 4294967296)"),
    ("engine.block_tokens=0", "engine.block_tokens",
     "Input should be greater than or equal to 1 (got 0)"),
    ("engine.block_tokens=65537", "engine.block_tokens",
     "Input should be less than or equal to 65536 (got 65537)"),
    ("engine.kv_quant_group=1000000", "engine.kv_quant_group",
     "Input should be less than or equal to 65536 (got 1000000)"),
    ("engine.max_batch=100000", "engine.max_batch",
     "Input should be less than or equal to 65536 (got 100000)"),
    ("engine.max_prefill_tokens=1e12", "engine.max_prefill_tokens",
     "Input should be less than or equal to 16777216 (got 1000000000000.0)"),
    ("engine.tiering_interval_steps=1e12", "engine.tiering_interval_steps",
     "Input should be less than or equal to 10000000 (got 1000000000000.0)"),
    ("workload.arrival={kind: closed, concurrency: 1e9}", "workload.arrival.concurrency",
     "Input should be less than or equal to 10000000 (got 1000000000.0)"),
    ("speculation.ngram=1000", "speculation.ngram",
     "Input should be less than or equal to 64 (got 1000)"),
    ("speculation.draft_layers=1e9", "speculation.draft_layers",
     "Input should be less than or equal to 1024 (got 1000000000.0)"),
    ("engine.kv_budget_bytes=1e30", "engine.kv_budget_bytes",
     "Input should be less than or equal to 1000000000000000 (got 1e+30)"),
])
def test_a_size_out_of_bounds_is_refused_naming_file_and_field(tmp_path, override, field,
                                                               message):
    path = scenario_text(tmp_path, BASE_YAML)
    assert refused(resolve_runs, path, [override]) == [f"{path}: {field}: {message}"]


def test_the_bounds_leave_the_largest_bundled_sizes_valid(tmp_path):
    path = scenario_text(tmp_path, BASE_YAML)
    ((_, scn),) = resolve_runs(path, ["workload.num_requests=10000000", "seed=4294967295",
                                      "engine.max_draft_len=256", "engine.block_tokens=65536"])
    assert (scn.workload.num_requests, scn.seed, scn.engine.max_draft_len,
            scn.engine.block_tokens) == (10_000_000, 2**32 - 1, 256, 65536)




@pytest.mark.parametrize("row, message", [
    ("-1,8,2", "line 2: arrival_s out of range (0 to 1e+09 s, got -1)"),
    ("inf,8,2", "line 2: arrival_s out of range (0 to 1e+09 s, got inf)"),
    ("nan,8,2", "line 2: arrival_s out of range (0 to 1e+09 s, got nan)"),
    ("1e10,8,2", "line 2: arrival_s out of range (0 to 1e+09 s, got 1e10)"),
    ("0,0,2", "line 2: prompt_tokens out of range (1 to 16,777,216, got 0)"),
    ("0,8,99999999999", "line 2: output_tokens out of range (1 to 16,777,216, got 99999999999)"),
    ("0,1e20,2", "line 2: bad or missing 'prompt_tokens'"),
])
def test_a_trace_row_out_of_bounds_names_file_and_line(tmp_path, row, message):
    path = tmp_path / "t.csv"
    path.write_text(TRACE_HEADER + row + "\n")
    assert refused(read_trace, path) == [f"{path}: {message}"]


def test_every_bad_trace_row_is_reported(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(TRACE_HEADER + "0,8,2\n-1,8,2\n0,0,2\n")
    assert refused(read_trace, path) == [
        f"{path}: line 3: arrival_s out of range (0 to 1e+09 s, got -1)",
        f"{path}: line 4: prompt_tokens out of range (1 to 16,777,216, got 0)"]


def test_a_trace_with_too_many_rows_is_refused_at_the_first_row_too_many(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(TRACE_HEADER + "0,8,2\n" * 4)
    assert len(read_trace(path, max_rows=4)) == 4
    assert refused(read_trace, path, 3) == [f"{path}: line 5: more than 3 requests"]


# -- 2. floats: finite everywhere, physically meaningful where near zero is nonsense -------------
@pytest.mark.parametrize("override, field", [
    ("attention.sink=.inf", "attention.sink"),
    ("attention.heavy_sigma=.nan", "attention.heavy_sigma"),
    ("workload.arrival={kind: closed, think_s: .inf}", "workload.arrival.think_s"),
    ("engine.kv_budget_bytes=.inf", "engine.kv_budget_bytes"),  # float | None
    ("engine.host_budget_bytes=.nan", "engine.host_budget_bytes"),
    ("quality.base_ppl=.inf", "quality.base_ppl"),
    ("quality.int4_delta_ppl={value: .inf, source: me}", "quality.int4_delta_ppl.value"),
])
def test_a_non_finite_number_is_refused_in_every_scenario_field(tmp_path, override, field):
    path = scenario_text(tmp_path, BASE_YAML)
    (line,) = refused(resolve_runs, path, [override])
    assert line.startswith(f"{path}: {field}: Input should be a finite number (got ")


def test_a_discriminated_unions_tag_is_not_in_the_field(tmp_path):
    path = scenario_text(tmp_path, BASE_YAML)
    assert refused(resolve_runs, path, ["workload.arrival={kind: poisson, rate_per_s: .inf}"]) \
        == [f"{path}: workload.arrival.rate_per_s: Input should be a finite number (got inf)"]


def _hardware(tmp_path: Path, device: dict | None = None, memory: dict | None = None) -> Path:
    data = yaml.safe_load((PROFILE_DIR / "h200.yaml").read_text())
    data["devices"][0].update(device or {})
    data["memories"][0].update(memory or {})
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("device, memory, line", [
    ({"launch_overhead_s": float("inf")}, None,
     "devices.0.launch_overhead_s: Input should be a finite number (got inf)"),
    ({"launch_overhead_s": 5.0}, None,
     "devices.0.launch_overhead_s: Input should be less than or equal to 1 (got 5.0)"),
    ({"peak_flops_per_s": 1e-300}, None,
     "devices.0.peak_flops_per_s: Input should be greater than or equal to 1 (got 1e-300)"),
    ({"compute_efficiency": 1e-9}, None,
     "devices.0.compute_efficiency: Input should be greater than or equal to 0.001 (got 1e-09)"),
    (None, {"capacity_bytes": float("nan")},
     "memories.0.capacity_bytes: Input should be a finite number (got nan)"),
    (None, {"bandwidth_bytes_per_s": 1e20},
     "memories.0.bandwidth_bytes_per_s: Input should be less than or equal to 1000000000000000 "
     "(got 1e+20)"),
])
def test_a_hardware_figure_out_of_physical_bounds_is_refused(tmp_path, device, memory, line):
    path = _hardware(tmp_path, device, memory)
    assert refused(load_profile, str(path)) == [f"{path}: {line}"]


def _quality_scenario(tmp_path: Path, base_ppl: str, int2: str = "1.0") -> Path:
    (tmp_path / "q.yaml").write_text(f"base_ppl: {base_ppl}\npenalties: {{int8: 0.01, "
                                     f"int4: 0.1, int2: {int2}, missing: 2.0}}\n")
    return scenario_text(tmp_path, BASE_YAML + "quality: {profile: q.yaml}\n")


def test_a_quality_profiles_problems_are_all_said_of_the_scenarios_field(tmp_path):
    path = _quality_scenario(tmp_path, ".inf", int2="-1")
    q = tmp_path / "q.yaml"
    assert refused(resolve_runs, path, []) == [
        f"{path}: quality.profile: quality profile '{q}': base_ppl: Input should be a finite "
        "number (got inf)",
        f"{path}: quality.profile: quality profile '{q}': penalties.int2: Input should be greater "
        "than or equal to 0 (got -1)"]


def test_a_quality_profile_number_may_not_be_a_string(tmp_path):
    path = _quality_scenario(tmp_path, '"12"')
    assert refused(resolve_runs, path, []) == [
        f"{path}: quality.profile: quality profile '{tmp_path / 'q.yaml'}': base_ppl: Input should "
        "be a valid number (got '12')"]


CALIBRATION = {"backend": "torch", "device": "cpu", "machine": "m", "model": "gpt2",
               "dtype": "float32", "kv_dtype": "float16", "threads": 1, "block_tokens": 16,
               "kv_quant_group": 64, "coefficients": {"forward": 0.125}}


@pytest.mark.parametrize("change, line", [
    ({"coefficients": {"forward": float("nan")}},
     "coefficients.forward: not a calibration profile: Input should be a finite number (got nan)"),
    ({"coefficients": {"layer": -1.0}},
     "coefficients.layer: not a calibration profile: Input should be greater than or equal to 0 "
     "(got -1.0)"),
    ({"copy_bytes_per_s": 0.0},
     "copy_bytes_per_s: not a calibration profile: Input should be greater than 0 (got 0.0)"),
    ({"threads": 0},
     "threads: not a calibration profile: Input should be greater than or equal to 1 (got 0)"),
])
def test_a_calibration_profile_number_out_of_bounds_is_refused(tmp_path, change, line):
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({**CALIBRATION, **change}))
    assert refused(load_calibration, path) == [f"{path}: {line}"]


def test_a_calibration_rate_documented_as_free_may_be_infinite(tmp_path):
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({**CALIBRATION, "alloc_bytes_per_s": float("inf")}))
    assert load_calibration(path).alloc_bytes_per_s == float("inf")


# -- 5. settings that would be silently ignored --------------------------------------------------
def test_set_cannot_change_variants():
    assert refused(parse_set, "variants.fast.engine.max_batch=4") == [
        "--set: cannot change variants ('variants.fast.engine.max_batch'): edit them in the "
        "scenario, or pick some with --variant"]


def test_a_scenario_needs_at_least_one_cost_model_each_once(tmp_path):
    path = scenario_text(tmp_path, BASE_YAML)
    assert refused(resolve_runs, path, ["cost_models=[]"]) == [
        f"{path}: cost_models: name at least one cost model (roofline, coefficient, calibrated)"]
    assert refused(resolve_runs, path, ["cost_models=[roofline, roofline]"]) == [
        f"{path}: cost_models: cost model 'roofline' is listed twice"]


# -- 6. every error reported, each blamed where it comes from ------------------------------------
def test_a_line_break_in_a_key_stays_escaped_on_its_one_line(tmp_path):
    path = scenario_text(tmp_path, BASE_YAML)
    assert refused(resolve_runs, path, ["engine.max\u2028batch=2"]) == [
        f"{path}: engine.max\\u2028batch: Extra inputs are not permitted"]


def test_a_user_error_carries_several_lines_and_keeps_its_one_line_form():
    one = UserError("bad", file="/s.yaml", field="seed")
    assert (str(one), one.lines, one.errors) == ("/s.yaml: seed: bad", ("/s.yaml: seed: bad",),
                                                 (one,))
    both = UserError.collect([one, UserError("worse", file="/s.yaml"), one])  # each line once
    assert both.lines == ("/s.yaml: seed: bad", "/s.yaml: worse")
    assert (both.file, both.field, both.message) == ("/s.yaml", "seed", "bad")
    assert str(both.at(file="/t.yaml", field="hardware")) == \
        "/t.yaml: hardware: bad\n/t.yaml: hardware: worse"


VARIANTS_YAML = BASE_YAML.replace("num_requests: 2", "num_requests: 0") + """\
variants:
  fp16-kv: {}
  long-drafts: {engine.max_draft_len: 1e9}
"""


def test_every_error_is_reported_and_the_bases_are_not_blamed_on_a_variant(tmp_path):
    path = scenario_text(tmp_path, VARIANTS_YAML)
    assert refused(resolve_runs, path, ["seed=-1", "attention.sink=.nan"]) == [
        f"{path}: seed: Input should be greater than or equal to 0 (got -1)",
        f"{path}: workload.num_requests: Input should be greater than or equal to 1 (got 0)",
        f"{path}: attention.sink: Input should be a finite number (got nan)",
        f"{path}: variants.long-drafts -> engine.max_draft_len: Input should be less than or "
        "equal to 256 (got 1000000000.0)"]


def test_an_error_a_variant_fixes_is_not_reported(tmp_path):
    path = scenario_text(tmp_path, VARIANTS_YAML.replace(
        "fp16-kv: {}", "fp16-kv: {workload.num_requests: 2}").replace(
        "long-drafts: {engine.max_draft_len: 1e9}", "long-drafts: {workload.num_requests: 3}"))
    runs = dict(resolve_runs(path, []))
    assert {name: scn.workload.num_requests for name, scn in runs.items()} == \
        {"fp16-kv": 2, "long-drafts": 3}


def test_a_model_level_error_names_its_field_not_an_empty_one(tmp_path):
    path = scenario_text(tmp_path, VARIANTS_YAML.replace("num_requests: 0", "num_requests: 2")
                         .replace("fp16-kv: {}", "fp16-kv: {cost_models: [coefficient]}"))
    assert refused(resolve_runs, path, []) == [
        f"{path}: variants.fp16-kv -> coefficient: cost model 'coefficient' needs a "
        "'coefficient' section",
        f"{path}: variants.long-drafts -> engine.max_draft_len: Input should be less than or "
        "equal to 256 (got 1000000000.0)"]


def test_the_command_line_prints_one_prefixed_line_per_error(tmp_path, capsys):
    path = scenario_text(tmp_path, VARIANTS_YAML)
    status = main(["simulate", str(path), "--json"])
    captured = capsys.readouterr()
    assert (status, captured.out) == (2, "")
    assert captured.err.splitlines() == [
        f"infer-os: error: {path}: workload.num_requests: Input should be greater than or "
        "equal to 1 (got 0)",
        f"infer-os: error: {path}: variants.long-drafts -> engine.max_draft_len: Input should "
        "be less than or equal to 256 (got 1000000000.0)"]


def test_a_single_error_on_the_command_line_is_one_line(tmp_path, capsys):
    path = scenario_text(tmp_path, BASE_YAML)
    status = main(["simulate", str(path), "--set", "workload.num_requests=1e9"])
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        f"infer-os: error: {path}: workload.num_requests: Input should be less than or equal to "
        "10000000 (got 1000000000.0)"]


def test_a_valid_scenario_still_simulates(tmp_path, capsys):
    path = scenario_text(tmp_path, BASE_YAML)
    assert main(["simulate", str(path), "--json", "--set", "engine.kv_budget_bytes=1e9"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [run["variant"] for run in doc["runs"]] == ["default"]
    assert np.isfinite(doc["runs"][0]["metrics"]["throughput_tok_s"])
