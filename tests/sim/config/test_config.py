"""Scenario files: variants, ``--set`` overrides and the errors that name file and field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from policies import UniformTiering
from sim.config.scenario import parse_set, resolve_runs
from sim.errors import UserError


def test_no_variants_gives_one_run_named_default(tmp_path, base_scenario, scenario_file):
    runs = resolve_runs(scenario_file(tmp_path, base_scenario()), [])
    assert [name for name, _ in runs] == ["default"]
    assert runs[0][1].engine.max_batch == 2


def test_variants_run_in_file_order_each_from_the_base(tmp_path, base_scenario, scenario_file):
    variants = {
        "zeta": {"engine.max_batch": 3},
        "alpha": {"policies.tiering": {"kind": "uniform", "precision": "int8"}},
        "mid": {},
    }
    runs = dict(resolve_runs(scenario_file(tmp_path, base_scenario(variants=variants)), []))
    assert list(runs) == ["zeta", "alpha", "mid"]  # file order, not sorted
    table = {name: (scn.engine.max_batch, scn.policies.tiering.kind)
             for name, scn in runs.items()}
    # one variant's override never leaks into another
    assert table == {"zeta": (3, "fp16"), "alpha": (2, "uniform"), "mid": (2, "fp16")}


def test_a_variants_overrides_apply_in_order(tmp_path, base_scenario, scenario_file):
    # the later, more specific key refines what the earlier one set; a later key on the same
    # field wins
    variants = {"v": {"policies.tiering": {"kind": "uniform", "precision": "int8"},
                      "policies.tiering.precision": "int4",
                      "engine.max_batch": 5,
                      "engine": {"max_batch": 7, "block_tokens": 32}}}
    ((_, scn),) = resolve_runs(scenario_file(tmp_path, base_scenario(variants=variants)), [])
    assert scn.policies.tiering == UniformTiering(precision="int4")
    assert (scn.engine.max_batch, scn.engine.block_tokens) == (7, 32)


def test_set_wins_over_a_variants_own_override(tmp_path, base_scenario, scenario_file):
    variants = {"small": {"engine.max_batch": 3}, "plain": {}}
    path = scenario_file(tmp_path, base_scenario(variants=variants))
    runs = dict(resolve_runs(path, ["engine.max_batch=9", "seed=17"]))
    assert {name: (scn.engine.max_batch, scn.seed) for name, scn in runs.items()} == \
        {"small": (9, 17), "plain": (9, 17)}


def test_set_values_are_parsed_as_yaml(tmp_path, base_scenario, scenario_file):
    path = scenario_file(tmp_path, base_scenario())
    ((_, scn),) = resolve_runs(path, [
        "workload.arrival={kind: poisson, rate_per_s: 2.5}",
        "policies.tiering={kind: uniform, precision: int8}",
        "description=",
    ])
    assert (scn.workload.arrival.kind, scn.workload.arrival.rate_per_s) == ("poisson", 2.5)
    assert scn.policies.tiering == UniformTiering(precision="int8")
    assert scn.description == ""


@pytest.mark.parametrize("item", ["engine.max_batch", "=3", "engine..max_batch=3", ".x=1"])
def test_malformed_set_is_rejected_naming_the_flag(item):
    with pytest.raises(UserError) as info:
        parse_set(item)
    assert info.value.field == "--set"
    assert repr(item) in str(info.value)


def test_unknown_policy_parameter_is_rejected_naming_it(tmp_path, base_scenario, scenario_file):
    data = base_scenario()
    data["policies"]["tiering"] = {"kind": "uniform", "bits": 4}
    path = scenario_file(tmp_path, data)
    with pytest.raises(UserError) as info:
        resolve_runs(path, [])
    err = info.value
    assert err.file == str(path)
    assert err.field == "policies.tiering.bits"
    assert "'bits'" in err.message and "'uniform'" in err.message and "precision" in err.message


def test_unknown_policy_kind_lists_the_known_ones(tmp_path, base_scenario, scenario_file):
    path = scenario_file(tmp_path, base_scenario())
    with pytest.raises(UserError) as info:
        resolve_runs(path, ["policies.speculation={kind: maybe}"])
    assert "'maybe'" in info.value.message
    assert "off" in info.value.message and "fixed" in info.value.message


def test_missing_policy_family_is_rejected(tmp_path, base_scenario, scenario_file):
    data = base_scenario()
    del data["policies"]["buffers"]
    with pytest.raises(UserError) as info:
        resolve_runs(scenario_file(tmp_path, data), [])
    assert "policies.buffers" in str(info.value)


def test_resolve_runs_names_the_variant_in_the_field(tmp_path, base_scenario, scenario_file):
    variants = {"good": {}, "bad": {"engine.max_batch": 0}}
    path = scenario_file(tmp_path, base_scenario(variants=variants))
    with pytest.raises(UserError) as info:
        resolve_runs(path, [])
    err = info.value
    assert err.file == str(path)
    assert err.field == "variants.bad -> engine.max_batch"
    assert str(err).startswith(f"{path}: variants.bad -> engine.max_batch: ")


def test_an_error_from_a_set_is_blamed_plainly_not_on_a_variant(tmp_path, base_scenario,
                                                                 scenario_file):
    variants = {"first": {}, "second": {"workload.num_requests": 0}}
    path = scenario_file(tmp_path, base_scenario(variants=variants))
    with pytest.raises(UserError) as info:
        resolve_runs(path, ["engine.max_batch=-1"])
    assert info.value.field == "engine.max_batch"  # every variant has it: the --set's own
    with pytest.raises(UserError) as info:
        resolve_runs(path, [])
    assert info.value.field == "variants.second -> workload.num_requests"  # the variant's own


def test_unknown_key_is_rejected_naming_the_field(tmp_path, base_scenario, scenario_file):
    data = base_scenario()
    data["engine"]["max_bach"] = 4
    with pytest.raises(UserError) as info:
        resolve_runs(scenario_file(tmp_path, data), [])
    assert info.value.field == "engine.max_bach"


@pytest.mark.parametrize("text, expected", [
    ("name: x\nmodel: {spec: gpt2\n", "invalid YAML at line"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("", "must be a YAML mapping"),
])
def test_a_file_that_is_not_a_scenario_mapping_is_rejected(tmp_path, text, expected):
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        resolve_runs(path, [])
    assert info.value.file == str(path)
    assert expected in info.value.message


def test_variants_that_are_not_a_mapping_are_rejected(tmp_path, base_scenario, scenario_file):
    path = scenario_file(tmp_path, base_scenario(variants=["a", "b"]))
    with pytest.raises(UserError) as info:
        resolve_runs(path, [])
    assert info.value.field == "variants"


def test_a_variant_that_is_not_a_mapping_is_rejected_naming_it(tmp_path, base_scenario,
                                                               scenario_file):
    path = scenario_file(tmp_path, base_scenario(variants={"a": {}, "b": ["engine.max_batch", 3]}))
    with pytest.raises(UserError) as info:
        resolve_runs(path, [])
    assert "variants.b" in str(info.value)


def test_lognormal_with_high_below_low_is_rejected(tmp_path, base_scenario, scenario_file):
    path = scenario_file(tmp_path, base_scenario())
    with pytest.raises(UserError) as info:
        resolve_runs(path, ["workload.prompt_tokens={kind: lognormal, median: 100, sigma: 1, "
                            "low: 200, high: 50}"])
    assert info.value.field.startswith("workload.prompt_tokens")


def test_uniform_with_high_below_low_is_rejected(tmp_path, base_scenario, scenario_file):
    path = scenario_file(tmp_path, base_scenario())
    with pytest.raises(UserError) as info:
        resolve_runs(path, ["workload.prompt_tokens={kind: uniform, low: 200, high: 50}"])
    assert info.value.field.startswith("workload.prompt_tokens")
    assert "high must be >= low" in info.value.message


def test_coefficient_cost_model_needs_its_section(tmp_path, base_scenario, scenario_file):
    path = scenario_file(tmp_path, base_scenario(cost_models=["roofline", "coefficient"]))
    with pytest.raises(UserError) as info:
        resolve_runs(path, [])
    assert "'coefficient' section" in info.value.message


def test_scenario_is_frozen(tmp_path, base_scenario, scenario_file):
    ((_, scn),) = resolve_runs(scenario_file(tmp_path, base_scenario()), [])
    with pytest.raises(ValidationError, match="frozen"):
        scn.engine.max_batch = 5  # type: ignore[misc]
    assert scn.engine.max_batch == 2
