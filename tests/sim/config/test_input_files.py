"""Hostile input files (issue 15): a model's ``config.json`` checked key by key, YAML read by one
set of rules (duplicate keys, nesting, aliases, YAML 1.2 numbers, string keys), and bytes that are
not UTF-8; each refused with one ``FILE: FIELD: message`` line per problem."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sim.config import yaml_io
from sim.config.hardware import load_profile
from sim.config.model_spec import resolve_model
from sim.config.scenario import parse_set, resolve_runs
from sim.costs.calibrated import load_calibration
from sim.engine.workload import read_trace
from sim.run.runner import check_scenario
from tests.sim.config.hostile import BASE_YAML, TRACE_HEADER, refused, scenario_text

# -- 3. a model's config.json ---------------------------------------------------------------------
LLAMA_CONFIG = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
                "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                "vocab_size": 256, "max_position_embeddings": 512}


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("change, lines", [
    ({"num_attention_heads": 0}, ["num_attention_heads: expected an integer in 1..262,144, got 0"]),
    ({"num_hidden_layers": -3}, ["num_hidden_layers: expected an integer in 1..1,024, got -3"]),
    ({"hidden_size": "64"}, ['hidden_size: expected an integer in 1..262,144, got "64"']),
    ({"vocab_size": None}, ["vocab_size: expected an integer, got null"]),
    ({"intermediate_size": [128]}, ["intermediate_size: expected an integer in 1..1,048,576, "
                                    "got [128]"]),
    ({"num_hidden_layers": True}, ["num_hidden_layers: expected an integer in 1..1,024, got true"]),
    ({"max_position_embeddings": 10**30}, ["max_position_embeddings: expected an integer in "
                                           "1..16,777,216, got 1000000000000000000000000000000"]),
    ({"tie_word_embeddings": "false"},
     ['tie_word_embeddings: expected true or false, got "false"']),
    ({"num_attention_heads": 5, "num_key_value_heads": 5},
     ["num_attention_heads: 5 heads do not divide the hidden size 64"]),
    ({"num_key_value_heads": 3}, ["num_key_value_heads: 3 key/value heads do not divide 4 heads"]),
    ({"num_attention_heads": 0, "vocab_size": -1},  # every bad key, in reading order
     ["num_attention_heads: expected an integer in 1..262,144, got 0",
      "vocab_size: expected an integer in 1..16,777,216, got -1"]),
])
def test_a_bad_config_json_value_names_the_file_and_the_key(tmp_path, change, lines):
    path = _config(tmp_path, json.dumps({**LLAMA_CONFIG, **change}))
    assert refused(resolve_model, str(path)) == [f"{path}: {line}" for line in lines]


def test_a_config_json_head_dim_may_differ_from_hidden_over_heads(tmp_path):
    # Gemma, Qwen3: an explicit head_dim need not be hidden / heads
    path = _config(tmp_path, json.dumps({**LLAMA_CONFIG, "num_attention_heads": 5,
                                         "num_key_value_heads": 1, "head_dim": 32}))
    spec = resolve_model(str(path))
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim) == (5, 1, 32)


@pytest.mark.parametrize("text, line", [
    ("[1, 2]", "expected a JSON object (a Hugging Face config.json)"),
    ('{"hidden_size": 64,', "invalid JSON at line 1 (Expecting property name enclosed in double "
                            "quotes)"),
    ('{"model_type": "llama", "hidden_size": NaN}', "NaN is not a JSON number"),
    ('{"hidden_size": 64, "hidden_size": 32}', "hidden_size: duplicate key"),
    ("[" * 100_000 + "]" * 100_000, "invalid JSON (nested too deeply)"),
])
def test_a_config_json_that_is_not_one_object_is_refused(tmp_path, text, line):
    path = _config(tmp_path, text)
    assert refused(resolve_model, str(path)) == [f"{path}: {line}"]


def test_a_scenarios_bad_model_config_is_reported_at_the_config_and_key(tmp_path):
    config = _config(tmp_path, json.dumps({**LLAMA_CONFIG, "num_key_value_heads": 3}))
    path = scenario_text(tmp_path, BASE_YAML)
    ((_, scn),) = resolve_runs(path, ["model.spec=model"])
    assert refused(check_scenario, scn, tmp_path) == [
        f"{config}: num_key_value_heads: 3 key/value heads do not divide 4 heads"]


# -- 4. YAML structure ---------------------------------------------------------------------------
def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path):
    path = scenario_text(tmp_path, BASE_YAML.replace("engine: {max_batch: 2}",
                                                     "engine:\n  max_batch: 2\n  max_batch: 4"))
    assert refused(resolve_runs, path, []) == [
        f"{path}: engine.max_batch: duplicate key at line 7 (first at line 6)"]


def test_a_merge_key_may_be_overridden_without_a_duplicate(tmp_path):
    path = scenario_text(tmp_path, BASE_YAML.replace(
        "engine: {max_batch: 2}", "defaults: &d {max_batch: 2, block_tokens: 8}\n"
                                  "engine: {<<: *d, block_tokens: 32}").replace("name: t\n", ""))
    data = yaml_io.load_yaml(path)
    assert data["engine"] == {"max_batch": 2, "block_tokens": 32}


def test_yaml_1_2_numbers_are_floats_and_infinity_is_then_refused(tmp_path):
    path = scenario_text(tmp_path, BASE_YAML)
    ((_, scn),) = resolve_runs(path, ["engine.kv_budget_bytes=1e9", "workload.num_requests=1.0e1",
                                      "engine.host_budget_bytes=2E+9"])
    assert (scn.engine.kv_budget_bytes, scn.workload.num_requests,
            scn.engine.host_budget_bytes) == (1e9, 10, 2e9)
    assert yaml_io.parse_yaml("[1e9, 1.0e9, -.5, 128, '1e9', 1_000, 2024-01-01]") == \
        [1e9, 1e9, -0.5, 128, "1e9", 1000, "2024-01-01"]  # YAML 1.2: no dates either
    (line,) = refused(resolve_runs, path, ["engine.kv_budget_bytes=.inf"])
    assert line == f"{path}: engine.kv_budget_bytes: Input should be a finite number (got inf)"


@pytest.mark.parametrize("text, line", [
    ("a: " + "[" * 200 + "]" * 200, "invalid YAML at line 1 (nested deeper than 64 levels)"),
    ("a: &x [*x]", "a.0: alias at line 1 refers to a mapping or sequence that contains it"),
    ("1: x", "key 1 at line 1 is not a string (quote it)"),
    ("a:\n  b: {true: 3}", "a.b: key true at line 2 is not a string (quote it)"),
    ("a: {[1]: 2}", "a: key [...] at line 1 is not a string (quote it)"),
    ("a: [1, 2", "invalid YAML at line 1 (expected ',' or ']', but got '<stream end>')"),
    ("a: " + "7" * 5000, "invalid YAML (an integer of more than 4,300 digits)"),
    ("a: !!set {x}", "invalid YAML at line 1 (could not determine a constructor for the tag "
                     "'tag:yaml.org,2002:set')"),
])
def test_a_badly_structured_yaml_document_is_refused(tmp_path, text, line):
    path = tmp_path / "doc.yaml"
    path.write_text(text)
    assert refused(yaml_io.load_yaml, path) == [f"{path}: {line}"]


def test_billion_laughs_is_refused_quickly(tmp_path):
    names = "abcdefghi"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{b}: &{b} [{', '.join(['*' + a] * 10)}]" for a, b in zip(names, names[1:])]
    path = tmp_path / "lol.yaml"
    path.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    assert refused(yaml_io.load_yaml, path) == [
        f"{path}: f: more than 1,000,000 values once aliases are expanded"]
    assert time.perf_counter() - t0 < 2.0


def test_a_non_string_key_in_a_variants_overrides_is_refused(tmp_path):
    path = scenario_text(tmp_path, BASE_YAML + "variants:\n  v: {'': 3}\n")
    assert refused(resolve_runs, path, []) == [
        f"{path}: variants.v: '' is not a dotted key of the scenario"]


def test_a_non_string_key_anywhere_names_its_mapping_and_line(tmp_path):
    path = scenario_text(tmp_path, BASE_YAML + "variants:\n  v: {5: 3}\n")
    assert refused(resolve_runs, path, []) == [
        f"{path}: variants.v: key 5 at line 12 is not a string (quote it)"]


def test_a_set_value_with_a_duplicate_key_is_refused_naming_the_flag():
    assert refused(parse_set, "engine={max_batch: 2, max_batch: 3}") == [
        "--set: value of 'engine': max_batch: duplicate key at line 1 (first at line 1)"]


def _not_utf8(path: Path) -> Path:
    path.write_bytes(b"name: caf\xe9\n")
    return path


def test_a_scenario_that_is_not_utf8_is_refused(tmp_path):
    path = _not_utf8(tmp_path / "scenario.yaml")
    assert refused(resolve_runs, path, []) == [f"{path}: not UTF-8 text (byte 9)"]


def test_a_trace_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(TRACE_HEADER.encode() + b"0,8,2\xff\n")
    assert refused(read_trace, path) == [f"{path}: not UTF-8 text"]


def test_profiles_config_json_and_acceptance_traces_that_are_not_utf8_are_refused(tmp_path):
    hw = _not_utf8(tmp_path / "hw.yaml")
    assert refused(load_profile, str(hw)) == [f"{hw}: not UTF-8 text (byte 9)"]
    cal = _not_utf8(tmp_path / "cal.yaml")
    assert refused(load_calibration, cal) == [f"{cal}: --profile: not UTF-8 text (byte 9)"]
    config = _config(tmp_path, "")
    config.write_bytes(b'{"model_type": "\xff"}')
    assert refused(resolve_model, str(config)) == [f"{config}: not UTF-8 text (byte 16)"]
    _not_utf8(tmp_path / "q.yaml")
    path = scenario_text(tmp_path, BASE_YAML + "quality: {profile: q.yaml}\n")
    assert refused(resolve_runs, path, []) == [
        f"{path}: quality.profile: quality profile '{tmp_path / 'q.yaml'}': not UTF-8 text "
        "(byte 9)"]
    trace = tmp_path / "acc.txt"
    trace.write_bytes(b"1 0 \xff")
    path = scenario_text(tmp_path, BASE_YAML + "speculation: {acceptance_trace: acc.txt}\n")
    ((_, scn),) = resolve_runs(path, [])
    assert refused(check_scenario, scn, tmp_path) == [
        f"{trace}: speculation.acceptance_trace: not UTF-8 text (byte 4)"]


def test_a_file_too_large_to_read_whole_is_refused_before_parsing(tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_bytes(b"#" * (yaml_io.MAX_FILE_BYTES + 1))
    assert refused(resolve_runs, path, []) == [f"{path}: larger than 16 MiB"]
