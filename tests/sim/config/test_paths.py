"""The one rule for paths a scenario names (sim/config/paths.py), on real files."""

from __future__ import annotations

from pathlib import Path

from sim.config.paths import resolve_path


def test_a_relative_path_next_to_the_scenario_wins(tmp_path: Path, monkeypatch):
    (tmp_path / "scn").mkdir()
    (tmp_path / "scn" / "trace.csv").write_text("near")
    (tmp_path / "trace.csv").write_text("cwd")
    monkeypatch.chdir(tmp_path)  # the same name exists in the working directory too
    assert resolve_path("trace.csv", tmp_path / "scn") == tmp_path / "scn" / "trace.csv"


def test_a_relative_path_in_the_working_directory_only(tmp_path: Path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_path("data/x.json", tmp_path / "scn") == Path("data/x.json")


def test_a_missing_path_is_reported_next_to_the_scenario(tmp_path: Path):
    assert resolve_path("models/x.json", tmp_path) == tmp_path / "models" / "x.json"
    assert resolve_path("trace.csv", tmp_path) == tmp_path / "trace.csv"


def test_absolute_paths_home_and_variables(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("INFER_OS_TEST_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path(str(tmp_path / "a.yaml"), Path("/elsewhere")) == tmp_path / "a.yaml"
    assert resolve_path("$INFER_OS_TEST_DIR/a.yaml", None) == tmp_path / "a.yaml"
    assert resolve_path("~/a.yaml", Path("/elsewhere")) == tmp_path / "a.yaml"


def test_every_scenario_path_follows_the_rule(tmp_path: Path, monkeypatch):
    """A trace, an acceptance trace, a hardware profile and a model config next to the scenario
    are found from any working directory."""
    import shutil

    import yaml

    from sim.config.hardware import PROFILE_DIR
    from sim.config.scenario import resolve_runs
    from sim.run.runner import check_scenario

    shutil.copy(PROFILE_DIR / "cpu-2core-avx512.yaml", tmp_path / "hw.yaml")
    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, '
        '"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, '
        '"vocab_size": 256, "max_position_embeddings": 512}')
    (tmp_path / "trace.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,16,4\n")
    (tmp_path / "accept.txt").write_text("1 0 1\n")
    (tmp_path / "scn.yaml").write_text(yaml.safe_dump({
        "name": "paths", "model": {"spec": "config.json"}, "hardware": "hw.yaml",
        "workload": {"arrival": {"kind": "trace", "path": "trace.csv"}},
        "speculation": {"acceptance_trace": "accept.txt"},
        "policies": {"tiering": {"kind": "fp16"}, "buffers": {"kind": "exact"},
                     "speculation": {"kind": "off"},
                     "scheduling": {"kind": "single", "device": "cpu"}}}))
    monkeypatch.chdir("/")
    ((_, scn),) = resolve_runs(tmp_path / "scn.yaml", [])
    setup = check_scenario(scn, tmp_path)
    assert setup.model.num_layers == 2 and setup.hardware.name == "cpu-2core-avx512"
    assert setup.requests.prompt_tokens.tolist() == [16]
    assert setup.acceptance_trace.tolist() == [True, False, True]
