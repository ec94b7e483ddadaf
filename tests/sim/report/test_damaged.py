"""``infer-os report`` on damaged folders: a damaged or missing run file is drawn as a warning
naming it (and said on stderr) while the rest is drawn; a damaged document, an unwritable folder
or a folder whose run never finished is exit 2 with one line naming the file and what is wrong;
a folder written by an interrupted run says so."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from sim.cli import main
from tests.sim.report import pages

STEMS = ("fp16-kv.roofline", "int8-kv.roofline")


@pytest.fixture(scope="module")
def sim_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["simulate", "quickstart", "--out", str(out)]) == 0
    return out


@pytest.fixture
def folder(sim_out, tmp_path) -> Path:
    """A fresh copy of a ``simulate quickstart --out`` folder, to damage."""
    return Path(shutil.copytree(sim_out, tmp_path / "out"))


def report(folder: Path, capsys) -> tuple[int, str, list[str]]:
    """Exit status, the page (or "" when none was written) and the stderr lines."""
    status = main(["report", str(folder)])
    captured = capsys.readouterr()
    page = folder / "report.html"
    text = page.read_text() if page.is_file() else ""
    if status == 0:
        assert captured.out == f"{page}\n"
    return status, text, captured.err.splitlines()


def truncate(path: Path, keep_frac: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep_frac)])


def insert_line(text: str, after: int, line: str) -> str:
    lines = text.split("\r\n")
    return "\r\n".join([*lines[:after], line, *lines[after:]])


def gantt_count(page: str) -> int:
    return pages.count(page, "timeline")


def kv_count(page: str) -> int:
    return pages.count(page, "kv")


def per_request_variants(page: str) -> int:
    """How many variants the per-request error boxes draw."""
    [box] = [f for f in pages.figures(page) if pages.kind(f) == "box"]
    return len({x for t in box["data"] for x in t["x"]})


def test_a_truncated_trace_is_a_warning_and_the_rest_is_drawn(folder, capsys):
    path = folder / f"trace.{STEMS[0]}.json"
    truncate(path)
    status, page, err = report(folder, capsys)
    assert status == 0
    assert f"trace.{STEMS[0]}.json is damaged (cannot read it as JSON: " in page
    assert gantt_count(page) == 1  # the other run's timeline
    assert kv_count(page) == 2  # both KV charts
    assert len(err) == 1 and err[0].startswith(f"infer-os: note: {path}: cannot read it as JSON")
    assert err[0].endswith("a truncated file?: not drawn")


def test_a_trace_that_is_not_a_chrome_trace_is_named(folder, capsys):
    (folder / f"trace.{STEMS[1]}.json").write_text('{"traceEvents": [{"ph": "X", "pid": 1}]}')
    status, page, err = report(folder, capsys)
    assert status == 0 and gantt_count(page) == 1
    assert (f"trace.{STEMS[1]}.json is damaged (a device event is malformed (KeyError: 'tid')): "
            "not drawn." in page)
    assert err == [f"infer-os: note: {folder}/trace.{STEMS[1]}.json: a device event is "
                   "malformed (KeyError: 'tid'): not drawn"]


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda text: text[:text.index("\n", len(text) // 2) + 8],
     "line {n} is cut short: a truncated file?"),
    (lambda text: insert_line(text, 3, "1.5,x,0,0,0,0,0,0"), "line 4, fp16: 'x' is not a number"),
    (lambda text: "when,bytes\r\n1,2\r\n", "no column 'time_s'"),
], ids=["truncated", "not-a-number", "foreign"])
def test_a_damaged_kv_csv_is_a_warning_naming_the_line(folder, capsys, damage, problem):
    path = folder / f"kv.{STEMS[1]}.csv"
    damaged = damage(path.read_bytes().decode())
    path.write_bytes(damaged.encode())
    problem = problem.format(n=damaged.count("\r\n") + 1)
    status, page, err = report(folder, capsys)
    assert status == 0
    assert f"kv.{STEMS[1]}.csv is damaged ({problem}): not drawn." in page
    assert err == [f"infer-os: note: {path}: {problem}: not drawn"]
    assert kv_count(page) == 1 and gantt_count(page) == 2


def test_a_missing_run_file_is_said(folder, capsys):
    (folder / f"kv.{STEMS[0]}.csv").unlink()
    status, page, err = report(folder, capsys)
    assert status == 0 and f"kv.{STEMS[0]}.csv is missing: not drawn." in page
    assert err == [f"infer-os: note: {folder}/kv.{STEMS[0]}.csv: missing: not drawn"]


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda d: d.update(runs={"a": 1}), "runs", "expected a list of runs, found dict"),
    (lambda d: d["runs"][1]["metrics"].update(ttft_s="fast"), "runs[1].metrics.ttft_s",
     "expected an object of percentiles, found str"),
    (lambda d: d["runs"][0].pop("variant"), "runs[0].variant", "expected a name, found nothing"),
    (lambda d: d["runs"][0]["metrics"].pop("throughput_tok_s"), "runs[0].metrics",
     "no 'throughput_tok_s'"),
    (lambda d: d["runs"][1]["metrics"]["e2e_s"].update(p50="1 s"), "runs[1].metrics.e2e_s.p50",
     "expected a number or null, found str"),
    (lambda d: d.update(incomplete={"runs_written": "one"}), "incomplete.runs_written",
     "expected a count, found str"),
], ids=["runs", "stats", "variant", "throughput", "p50", "incomplete"])
def test_a_structurally_wrong_results_json_is_one_line_naming_the_field(
        folder, capsys, change, field, message):
    _edit(folder / "results.json", change)
    status, page, err = report(folder, capsys)
    assert (status, page) == (2, "")
    assert err == [f"infer-os: error: {folder}/results.json: {field}: {message}"]


def test_a_truncated_results_json_is_one_line(folder, capsys):
    truncate(folder / "results.json")
    status, page, err = report(folder, capsys)
    assert (status, page) == (2, "")
    assert len(err) == 1 and err[0].startswith(
        f"infer-os: error: {folder}/results.json: cannot read it as JSON (")
    assert err[0].endswith("): a truncated or foreign file?")


def test_an_unwritable_folder_is_one_line(folder, capsys):
    (folder / "report.html").mkdir()  # the page cannot take its place
    status, _, err = report(folder, capsys)
    assert status == 2
    assert err == [f"infer-os: error: {folder}/report.html: DIR: cannot write it "
                   "(Is a directory)"]
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_a_folder_of_an_interrupted_run_is_explained(folder, capsys):
    _edit(folder / "results.json", lambda d: d.update(
        runs=d["runs"][:1], incomplete={"runs_written": 1, "runs_planned": 2,
                                        "reason": "interrupted"}))
    status, page, err = report(folder, capsys)
    assert status == 0
    assert ("This folder was written by an interrupted run: 1 of 2 runs (the others are not in "
            "this folder).") in page
    assert err == [f"infer-os: note: {folder}: written by an interrupted run: 1 of 2 runs (the "
                   "others are not in this folder)"]
    assert gantt_count(page) == 1


def test_an_interrupted_run_that_finished_nothing_still_has_a_page(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({
        "scenario": "s", "backend": "sim", "runs": [],
        "incomplete": {"runs_written": 0, "runs_planned": 3, "reason": "interrupted"}}))
    status, page, err = report(tmp_path, capsys)
    assert status == 0 and "interrupted run: 0 of 3 runs" in page
    assert len(err) == 1


def test_run_files_without_a_document_say_the_run_did_not_finish(folder, capsys):
    (folder / "results.json").unlink()
    status, _, err = report(folder, capsys)
    assert status == 2
    assert err == [f"infer-os: error: DIR: {folder} holds run files but no results.json or "
                   "validation.json: the run writing it did not finish (killed, or still going); "
                   "run it again"]


def test_a_validate_folder_with_a_damaged_requests_csv_draws_the_rest(folder, capsys):
    """A validate folder made from the simulate one (each run stands in as its measured side)."""
    results = json.loads((folder / "results.json").read_text())
    runs = []
    for run in results["runs"]:
        pages.as_measured(folder, run["variant"])
        runs.append({"variant": run["variant"], "cost_model": "roofline",
                     "predicted": run["metrics"], "measured": run["metrics"],
                     "relative_error": {"throughput_tok_s": 0.0}, "per_request": {}})
    (folder / "results.json").unlink()
    (folder / "validation.json").write_text(json.dumps({"scenario": "quickstart",
                                                        "backend": "fake", "runs": runs}))
    status, page, err = report(folder, capsys)
    assert status == 0 and err == [] and per_request_variants(page) == 2
    path = folder / "requests.int8-kv.measured.csv"
    path.write_text(path.read_text().replace(",completed,", ",completed,nan-ish,", 1))
    status, page, err = report(folder, capsys)
    assert status == 0 and per_request_variants(page) == 1
    assert err == [f"infer-os: note: {path}: line 2 has more cells than the header: not drawn"]
    assert "requests.int8-kv.measured.csv is damaged (line 2 has more cells" in page
