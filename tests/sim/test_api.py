"""The Python API (sim/api.py): scenarios from files, names and dicts, policy objects where a file
has ``{kind: ...}``, runs under a cost model or on torch, and the metrics the JSON has."""

from __future__ import annotations

import json

import pytest

from policies import UniformTiering
from sim import api
from sim.cli import main
from tests.plugin_policies import KeepOldest, RaisingTiering


def cli_json(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_simulate_gives_the_metrics_the_json_has(capsys):
    doc = cli_json(capsys, "simulate", "quickstart")
    run = api.load_scenario("quickstart", variant="int8-kv")
    metrics = api.simulate(run)
    (want,) = [r["metrics"] for r in doc["runs"] if r["variant"] == "int8-kv"]
    assert metrics == {k: v for k, v in want.items() if k != "speedup_vs_baseline"}
    assert api.simulate_all("quickstart") == doc  # the whole document, speedups and all


def test_a_policy_object_runs_like_the_same_policy_named_in_a_file():
    run = api.load_scenario("quickstart", variant="fp16-kv")
    named = api.load_scenario("quickstart", variant="int8-kv")
    by_object = run.with_changes({"policies.tiering": UniformTiering(precision="int8")})
    assert api.simulate(by_object) == api.simulate(named)
    mine = run.with_changes({"policies.tiering": KeepOldest(keep=1),
                             "workload.num_requests": 6})
    metrics = api.simulate(mine)
    assert metrics["num_requests"] == 6 == metrics["num_completed"]
    assert metrics["kv_memory_saved_frac"] > 0
    assert api.simulate(mine, "roofline") == metrics  # the first cost model by default


def test_build_scenario_from_a_dict_with_objects(tmp_path, base_scenario):
    data = base_scenario()
    data["policies"]["tiering"] = KeepOldest(keep=2)
    run = api.build_scenario(data, base_dir=tmp_path)
    assert run.scenario.policies.tiering == KeepOldest(keep=2)
    assert run.base_dir == tmp_path
    assert api.simulate(run)["num_completed"] == 4
    data["variants"] = {"a": {}}
    with pytest.raises(api.UserError, match="with_changes"):
        api.build_scenario(data)


def test_bad_input_is_a_user_error_naming_the_field():
    run = api.load_scenario("quickstart", variant="fp16-kv")
    with pytest.raises(api.UserError) as err:
        run.with_changes({"policies.speculation": KeepOldest()})
    assert err.value.field == "policies.speculation"
    assert "a tiering policy ('keep-oldest') cannot be the speculation policy" in str(err.value)
    with pytest.raises(api.UserError) as err:
        run.with_changes({"policies.tiering": KeepOldest(pressure_cap=float("inf"))})
    assert err.value.field == "policies.tiering.pressure_cap"
    with pytest.raises(api.UserError, match="pass variant= .variants: fp16-kv, int8-kv."):
        api.load_scenario("quickstart")
    with pytest.raises(api.UserError, match="unknown scenario 'nope'"):
        api.load_scenario("nope")
    with pytest.raises(api.UserError, match="backend 'sim' predicts"):
        api.measure(run, backend="sim")


def test_a_policy_failure_raises_with_the_partial_metrics():
    run = api.load_scenario("quickstart", variant="fp16-kv").with_changes(
        {"policies.tiering": RaisingTiering(after_step=2)})
    with pytest.raises(api.PolicyFailure, match="tiering policy 'raising' raised "
                                                "ZeroDivisionError: planted bug") as err:
        api.simulate(run)
    metrics = err.value.metrics
    assert metrics["num_failed"] == metrics["num_requests"] - metrics["num_completed"] > 0


def test_list_policies_names_the_built_ins_with_their_parameters():
    listed = {p.name: p for p in api.list_policies()}
    assert listed["uniform"].family == "tiering" and listed["uniform"].source == "infer-os"
    assert ("precision", "Literal['int8', 'int4', 'int2']", "int4") in listed["uniform"].parameters
    assert listed["dynamic"].family == "speculation" and listed["single"].family == "scheduling"


def test_measure_on_torch_runs_a_policy_object_for_real(tmp_path, write_llama, write_scenario):
    pytest.importorskip("torch")
    model = write_llama(tmp_path / "llama")
    run = api.load_scenario(write_scenario(tmp_path, model, "api-torch",
                                           workload__num_requests=3))
    metrics = api.measure(run.with_changes({"policies.tiering": KeepOldest(keep=1)}))
    assert metrics["measured"]["device"].startswith("cpu")
    assert metrics["num_completed"] == 3
    assert metrics["kv_moves"]["requantize"] > 0  # the plugin demoted blocks of the real cache
