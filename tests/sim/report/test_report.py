"""``infer-os report DIR``: the HTML page drawn from ``simulate --out`` and ``validate --out``
folders is self-contained and well-formed, and what it plots is the folder's data (Gantt bars =
trace events, KV points = kv.*.csv rows, scatter points and error bars = validation.json)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import sim
from sim.cli import main

SVG = "{http://www.w3.org/2000/svg}"


def _report(folder: Path) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["report", str(folder)])
    return code, buf.getvalue()


def _page(folder: Path) -> ET.Element:
    """The whole page parsed as XML (it is well-formed: every SVG with it)."""
    text = (folder / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>\n")
    return ET.fromstring(text.split("\n", 1)[1])


def _charts(root: ET.Element, css_class: str) -> dict[str, ET.Element]:
    """Charts of one kind by their title (the bold first text)."""
    out = {}
    for el in root.iter(f"{SVG}svg"):
        if el.get("class") == css_class:
            title = next(t.text for t in el.iter(f"{SVG}text") if t.get("font-weight"))
            out[title.removesuffix(" (log axes)")] = el
    return out


def _marks(chart: ET.Element, tag: str, css_class: str) -> list[ET.Element]:
    return [el for el in chart.iter(f"{SVG}{tag}") if el.get("class") == css_class]


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
    text = (out / "report.html").read_text()
    assert "<script" not in text and "src=" not in text and "href=" not in text
    assert "https://" not in text  # nothing fetched: only the SVG namespace is a URL
    root = _page(out)
    assert root.find("head/title").text == "infer-os simulate: quickstart"
    headings = [h.text for h in root.iter("h2")]
    assert headings == ["Runs", "Device timelines", "KV memory over time"]


def test_runs_table_shows_each_runs_metrics(sim_dir):
    out, _ = sim_dir
    runs = json.loads((out / "results.json").read_text())["runs"]
    rows = [[td.text for td in tr.iter("td")] for tr in _page(out).iter("tr")][1:]
    assert [r[:2] for r in rows] == [["fp16-kv", "roofline"], ["int8-kv", "roofline"]]
    for row, run in zip(rows, runs):
        assert row[2] == f"{run['metrics']['throughput_tok_s']:.2f}"
        assert row[-1] == "16/0"
    assert [r[8] for r in rows] == ["0%", "47%"]  # KV saved: INT8 halves the KV (+ scales)


def test_each_trace_event_is_one_gantt_bar_on_its_device_lane(sim_dir):
    out, _ = sim_dir
    gantts = _charts(_page(out), "gantt")
    assert set(gantts) == {"fp16-kv (roofline)", "int8-kv (roofline)"}
    for title, chart in gantts.items():
        stem = title.replace(" (", ".").rstrip(")")
        events = [e for e in json.loads((out / f"trace.{stem}.json").read_text())["traceEvents"]
                  if e["ph"] == "X" and e["pid"] == 1]
        bars = _marks(chart, "rect", "span")
        assert len(bars) == len(events) > 100
        assert {b.get("data-lane") for b in bars} == {"cpu"}
        assert sorted(b.get("data-key") for b in bars) == sorted(e["name"] for e in events)
        # the axis is in seconds here (a 15 s run): the first prefill starts at 0
        first = min(bars, key=lambda b: float(b.get("data-start")))
        assert (first.get("data-key"), first.get("data-start")) == ("prefill", "0")


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

    chart = _charts(_page(out), "lines")["int8-kv (roofline): device KV"]
    [series] = _marks(chart, "path", "series")  # only the precisions in use are drawn
    assert series.get("data-series") == "int8"
    points = [tuple(p.split(",")) for p in series.get("data-points").split()]
    # units from the axis labels: engine clock (s), device KV (MB)
    labels = [t.text for t in chart.iter(f"{SVG}text")]
    assert "engine clock (s)" in labels and "device KV (MB)" in labels
    # a step chart: the value drawn at each row's time (held from the last point) is the row's
    rows_mb = [(f"{float(r['time_s']):.6g}", f"{int(r['int8']) / 1e6:.6g}") for r in rows]
    plotted, held = dict(points), None
    for t, value in rows_mb:
        held = plotted.get(t, held)
        assert held == value, t
    assert points[0] == rows_mb[0] and points[-1] == rows_mb[-1]
    assert len(points) < len(rows)  # a value that holds is drawn once


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
    root = _page(val_dir)
    assert root.find("head/title").text == "infer-os validate: tiny-validate on torch"
    assert "(predicted - measured) / measured" in "".join(root.itertext())
    scatters = _charts(root, "scatter")
    for run in doc["runs"]:
        tput = [p for p in _marks(scatters["throughput"], "circle", "point")
                if p.get("data-series") == run["variant"]]
        assert [(float(p.get("data-x")), float(p.get("data-y"))) for p in tput] == [
            (pytest.approx(run["measured"]["throughput_tok_s"], rel=1e-5),
             pytest.approx(run["predicted"]["throughput_tok_s"], rel=1e-5))]
    assert len(_marks(scatters["TPOT p50"], "line", "identity")) == 1  # the y = x line
    [bars] = _charts(root, "bars").values()
    got = {(b.get("data-series"), b.get("data-category")): float(b.get("data-value"))
           for b in _marks(bars, "rect", "bar")}
    for run in doc["runs"]:
        for name, title in (("throughput_tok_s", "throughput"), ("ttft_s.p50", "TTFT p50"),
                            ("kv_peak_bytes", "KV peak")):
            expected = run["relative_error"][name] * 100
            assert got[(run["variant"], title)] == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_validation_page_shows_per_request_errors_timelines_and_kv(val_dir):
    root = _page(val_dir)
    hists = _charts(root, "histogram")
    assert set(hists) == {"fp16: per-request error, 4 requests",
                          "int8: per-request error, 4 requests"}
    for chart in hists.values():  # every request paired by id, once per time
        counts: dict[str, int] = {}
        for b in _marks(chart, "rect", "bin"):
            counts[b.get("data-series")] = counts.get(b.get("data-series"), 0) + int(
                b.get("data-count"))
        assert counts == {"TTFT": 4, "E2E": 4}
    scatters = _charts(root, "scatter")
    for variant in ("fp16", "int8"):
        measured = {r["request_id"]: r["e2e_s"]
                    for r in _csv(val_dir / f"requests.{variant}.measured.csv")}
        points = _marks(scatters[f"{variant}: per-request E2E"], "circle", "point")
        assert sorted(float(p.get("data-x")) for p in points) == pytest.approx(
            sorted(float(v) * 1e3 for v in measured.values()), rel=1e-5)
    gantts = _charts(root, "gantt")
    assert set(gantts) == {f"{v} {s}" for v in ("fp16", "int8")
                           for s in ("predicted (roofline)", "measured")}
    events = [e for e in json.loads((val_dir / "trace.int8.measured.json").read_text())[
        "traceEvents"] if e["ph"] == "X" and e["pid"] == 1]
    assert len(_marks(gantts["int8 measured"], "rect", "span")) == len(events) > 0
    kv = _charts(root, "lines")
    assert {"int8 measured: device KV", "int8 predicted (roofline): device KV"} <= set(kv)


def test_a_validation_json_alone_still_gets_its_tables_and_error_plots(val_dir, tmp_path):
    (tmp_path / "validation.json").write_text((val_dir / "validation.json").read_text())
    assert _report(tmp_path)[0] == 0
    root = _page(tmp_path)
    assert len(_charts(root, "scatter")) == 5 and len(_charts(root, "bars")) == 1
    assert not _charts(root, "gantt") and not _charts(root, "histogram")
    assert "No per-request CSVs in this folder" in "".join(root.itertext())


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
    monkeypatch.setattr(sim, "sweep_report", fake, raising=False)
    assert _report(tmp_path)[0] == 0
    assert (tmp_path / "report.html").read_text() == f"<html>sweep of {tmp_path.name}</html>"

    monkeypatch.setitem(sys.modules, "sim.report.sweep", None)  # not importable
    monkeypatch.delattr(sim, "sweep_report")
    assert main(["report", str(tmp_path)]) == 2
    assert "sim.report.sweep" in capsys.readouterr().err
