"""``infer-os report DIR``: the HTML page drawn from ``simulate --out`` and ``validate --out``
folders is self-contained (plotly.js inlined once, nothing fetched), and what it plots is the
folder's data (timeline bars = trace events, KV points = kv.*.csv rows, scatter points and error
bars = validation.json)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import types
from pathlib import Path

import pytest

from sim.cli import main
from tests.sim.report import pages


def _report(folder: Path) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["report", str(folder)])
    return code, buf.getvalue()


def _page(folder: Path) -> str:
    text = (folder / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>\n")
    return text


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# -- simulate --out ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("sim") / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["simulate", "quickstart", "--out", str(out)]) == 0
    code, printed = _report(out)
    assert code == 0
    return out, printed


def test_report_prints_its_path_and_the_page_is_self_contained(sim_dir):
    out, printed = sim_dir
    assert printed.strip() == str(out / "report.html")
    page = _page(out)
    assert page.count("<script>") == 2  # plotly.js, once, and the script drawing the charts
    assert page.count("plotly.js v") == 1 and len(page) < 6_000_000
    own = page.replace(pages.plotly_js(), "")  # the page less the inlined library
    assert len(own) < len(page) - 1_000_000
    assert own.count("Plotly.newPlot") == 1 and "src=" not in own and "href=" not in own
    assert "http" not in own and "<link" not in own  # nothing fetched
    assert pages.title(page) == "infer-os simulate: quickstart"
    assert pages.headings(page) == ["Runs", "Device timelines", "KV memory over time"]
    figs = pages.figures(page)
    assert page.count('<div class="chart"') == len(figs) == 5


def test_runs_table_shows_each_runs_metrics(sim_dir):
    out, _ = sim_dir
    runs = json.loads((out / "results.json").read_text())["runs"]
    rows = pages.rows(_page(out))[1:]
    assert [r[:2] for r in rows] == [["fp16-kv", "roofline"], ["int8-kv", "roofline"]]
    for row, run in zip(rows, runs):
        assert row[2] == f"{run['metrics']['throughput_tok_s']:.2f}"
        assert row[-1] == "16/0"
        assert row[7].endswith(" MB")  # KV peak in units, not bytes
    assert [r[8] for r in rows] == ["0%", "47%"]  # KV saved: INT8 halves the KV (+ scales)
    [bars] = [f for f in pages.figures(_page(out)) if pages.kind(f) == "bars"]
    assert bars["data"][0]["y"] == [r["metrics"]["throughput_tok_s"] for r in runs]
    assert bars["layout"]["yaxis"]["rangemode"] == "tozero"


def test_each_trace_event_is_one_timeline_bar_on_its_device_lane(sim_dir):
    out, _ = sim_dir
    timelines = {t: f for t, f in pages.by_title(_page(out)).items()
                 if pages.kind(f) == "timeline"}
    assert set(timelines) == {"fp16-kv (roofline)", "int8-kv (roofline)"}
    for title, fig in timelines.items():
        stem = title.replace(" (", ".").rstrip(")")
        events = [e for e in json.loads((out / f"trace.{stem}.json").read_text())["traceEvents"]
                  if e["ph"] == "X" and e["pid"] == 1]
        ops = pages.timeline_ops(fig)
        assert len(ops) == len(events) > 100  # every op, not the first N
        assert {lane for lane, _, _ in ops} == {"cpu"}
        assert sorted(op for _, op, _ in ops) == sorted(e["name"] for e in events)
        # the axis is in seconds here (a 15 s run): the first prefill starts at 0
        assert min(ops, key=lambda o: o[2])[1:] == ("prefill", 0)
        assert fig["layout"]["xaxis"]["title"]["text"] == "engine clock (s)"


def test_kv_timeline_is_recorded_after_every_step_and_plotted_by_precision(sim_dir):
    out, _ = sim_dir
    metrics = {r["variant"]: r["metrics"]
               for r in json.loads((out / "results.json").read_text())["runs"]}
    rows = _csv(out / "kv.int8-kv.roofline.csv")
    assert list(rows[0]) == ["time_s", "fp16", "int8", "int4", "int2", "offloaded", "evicted",
                             "backup"]
    times = [float(r["time_s"]) for r in rows]
    assert times == sorted(set(times))  # one row per instant, on the engine clock
    assert times[-1] == pytest.approx(metrics["int8-kv"]["makespan_s"], rel=1e-8)  # last step
    assert {r["fp16"] for r in rows} == {"0"}  # uniform INT8: nothing at FP16
    assert max(int(r["int8"]) for r in rows) == metrics["int8-kv"]["kv_peak_bytes"]
    steps = metrics["int8-kv"]["engine"]
    assert len(rows) <= steps["num_prefill_steps"] + steps["num_decode_steps"]

    fig = pages.by_title(_page(out))["int8-kv (roofline): device KV"]
    [series] = fig["data"]  # only the precisions in use are drawn
    assert series["name"] == "int8" and series["line"]["shape"] == "hv"
    assert fig["layout"]["xaxis"]["title"]["text"] == "engine clock (s)"
    assert fig["layout"]["yaxis"]["title"]["text"] == "device KV (MB)"
    assert fig["layout"]["yaxis"]["rangemode"] == "tozero"
    points = list(zip(series["x"], series["y"]))
    # a step chart: the value drawn at each row's time (held from the last point) is the row's
    rows_mb = [(float(r["time_s"]), int(r["int8"]) / 1e6) for r in rows]
    plotted, held = {round(t, 9): v for t, v in points}, None
    for t, value in rows_mb:
        held = plotted.get(round(t, 9), held)
        assert held == pytest.approx(value), t
    assert points[0] == pytest.approx(rows_mb[0]) and points[-1] == pytest.approx(rows_mb[-1])
    assert len(points) < len(rows)  # a value that holds is drawn once
    assert "MB" in series["text"][0]  # hover in units


# -- validate --out ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def val_dir(tmp_path_factory, write_llama, write_scenario) -> Path:
    """``validate --out`` of a tiny random Llama on the torch backend: two variants, 4 requests."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("val")
    model = write_llama(root / "model", 0, layers=2)
    write_scenario(root, model, "tiny-validate", seed=1,
                   workload__arrival={"kind": "closed", "concurrency": 2},
                   workload__num_requests=4,
                   workload__prompt_tokens={"kind": "uniform", "low": 20, "high": 40},
                   workload__output_tokens={"kind": "uniform", "low": 6, "high": 12},
                   engine__max_batch=2, policies__buffers={"kind": "exact"},
                   variants={"fp16": {}, "int8": {"policies.tiering": {"kind": "uniform",
                                                                       "precision": "int8"}}})
    out = root / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["validate", str(root / "scn.yaml"), "--backend", "torch", "--cost-model",
                     "roofline", "--out", str(out)]) == 0
    assert _report(out)[0] == 0
    return out


def test_validate_out_writes_both_runs_files(val_dir):
    for variant in ("fp16", "int8"):
        for side in ("roofline", "measured"):
            for kind in ("requests.{}.csv", "trace.{}.json", "kv.{}.csv"):
                assert (val_dir / kind.format(f"{variant}.{side}")).exists()
    # the measured timeline holds the executor's true tensor bytes, by precision
    assert any(int(r["int8"]) > 0 for r in _csv(val_dir / "kv.int8.measured.csv"))
    fp16 = _csv(val_dir / "kv.fp16.measured.csv")
    assert {r["int8"] for r in fp16} == {"0"} and any(int(r["fp16"]) > 0 for r in fp16)


def test_validation_page_plots_predicted_against_measured(val_dir):
    doc = json.loads((val_dir / "validation.json").read_text())
    page = _page(val_dir)
    assert pages.title(page) == "infer-os validate: tiny-validate on torch"
    assert "(predicted - measured) / measured" in pages.text(page)
    figs = pages.by_title(page)
    for run in doc["runs"]:
        [tput] = [t for t in figs["throughput"]["data"] if t["name"] == run["variant"]]
        assert (tput["x"], tput["y"]) == (
            [pytest.approx(run["measured"]["throughput_tok_s"], rel=1e-9)],
            [pytest.approx(run["predicted"]["throughput_tok_s"], rel=1e-9)])
        assert run["variant"] in tput["text"][0] and "throughput" in tput["text"][0]
    assert figs["TPOT p50"]["data"][0]["line"]["dash"] == "dash"  # the y = x line
    bars = figs["Signed relative error by metric and variant"]
    got = {(t["name"], cat): v for t in bars["data"] for cat, v in zip(t["x"], t["y"])}
    for run in doc["runs"]:
        for name, title in (("throughput_tok_s", "throughput"), ("ttft_s.p50", "TTFT p50"),
                            ("kv_peak_bytes", "KV peak")):
            expected = run["relative_error"][name] * 100
            assert got[(run["variant"], title)] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_validation_page_shows_per_request_errors_timelines_and_kv(val_dir):
    page = _page(val_dir)
    figs = pages.by_title(page)
    box = figs["Per-request signed error by variant (requests in brackets)"]
    counts = {t["name"]: {c: t["x"].count(c) for c in set(t["x"])} for t in box["data"]}
    # every request paired by id, once per time
    assert counts == {"TTFT": {"fp16 (4)": 4, "int8 (4)": 4}, "E2E": {"fp16 (4)": 4,
                                                                     "int8 (4)": 4}}
    scatter = figs["Per-request E2E"]
    for variant in ("fp16", "int8"):
        measured = {r["request_id"]: r["e2e_s"]
                    for r in _csv(val_dir / f"requests.{variant}.measured.csv")}
        [points] = [t for t in scatter["data"] if t["name"] == variant]
        assert sorted(points["x"]) == pytest.approx(
            sorted(float(v) * 1e3 for v in measured.values()), rel=1e-9)
    timelines = {t for t, f in figs.items() if pages.kind(f) == "timeline"}
    assert timelines == {f"{v} {s}" for v in ("fp16", "int8")
                         for s in ("predicted (roofline)", "measured")}
    events = [e for e in json.loads((val_dir / "trace.int8.measured.json").read_text())[
        "traceEvents"] if e["ph"] == "X" and e["pid"] == 1]
    assert len(pages.timeline_ops(figs["int8 measured"])) == len(events) > 0
    assert {"int8 measured: device KV", "int8 predicted (roofline): device KV"} <= set(figs)


def test_a_validation_json_alone_still_gets_its_tables_and_error_plots(val_dir, tmp_path):
    (tmp_path / "validation.json").write_text((val_dir / "validation.json").read_text())
    assert _report(tmp_path)[0] == 0
    page = _page(tmp_path)
    assert pages.count(page, "scatter") == 5 and pages.count(page, "bars") == 1
    assert not pages.count(page, "timeline") and not pages.count(page, "box")
    assert "No per-request CSVs in this folder" in pages.text(page)


# -- errors and dispatch ----------------------------------------------------------------------

def test_a_folder_without_results_is_exit_2_naming_it(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "results.json" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_a_sweep_folder_is_drawn_by_sim_sweep_report(tmp_path, monkeypatch, capsys):
    (tmp_path / "sweep.json").write_text("{}")
    (tmp_path / "results.json").write_text('{"runs": []}')  # sweep.json wins
    fake = types.ModuleType("sim.report.sweep")
    fake.render = lambda folder: f"<html>sweep of {folder.name}</html>"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sim.report.sweep", fake)
    import sim.report

    # (an earlier test may have imported the real one: the package's attribute wins then)
    monkeypatch.setattr(sim.report, "sweep", fake, raising=False)
    assert _report(tmp_path)[0] == 0
    assert (tmp_path / "report.html").read_text() == f"<html>sweep of {tmp_path.name}</html>"

    monkeypatch.setitem(sys.modules, "sim.report.sweep", None)  # not importable
    monkeypatch.delattr(sim.report, "sweep")
    assert main(["report", str(tmp_path)]) == 2
    assert "sim.report.sweep" in capsys.readouterr().err
