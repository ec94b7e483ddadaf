"""The inline-SVG charts: nice ticks by hand, escaped text, well-formed XML, marks carrying their
data (stacked areas keep each series' own values; cut bars keep their true value)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from sim.report import svg

NS = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("lo, hi, ticks", [
    (0, 97.3, [0, 20, 40, 60, 80, 100]),
    (-0.23, 0.41, [-0.4, -0.2, 0, 0.2, 0.4, 0.6]),
    (0.0012, 0.0031, [0.001, 0.0015, 0.002, 0.0025, 0.003, 0.0035]),
    (0, 4, [0, 1, 2, 3, 4]),
])
def test_nice_ticks(lo, hi, ticks):
    assert svg.nice_ticks(lo, hi) == ticks


@pytest.mark.parametrize("lo, hi, ticks", [
    (8.8, 7864, [1, 10, 100, 1000, 10000]),
    (3, 40, [2, 5, 10, 20, 50]),
])
def test_log_ticks(lo, hi, ticks):
    assert svg.log_ticks(lo, hi) == ticks


def test_text_is_escaped_and_the_chart_is_well_formed():
    chart = svg.scatter([svg.Series('a<b & "c"', [1, 2], [2, 1])], x_label="x <ms>",
                        y_label="y", diagonal=True)
    root = ET.fromstring(chart)
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert 'a<b & "c"' in texts and "x <ms>" in texts
    points = [(p.get("data-x"), p.get("data-y")) for p in root.iter(f"{NS}circle")]
    assert points == [("1", "2"), ("2", "1")]


def test_stacked_areas_keep_each_series_values():
    chart = svg.lines([svg.Series("fp16", [0, 1], [3, 4]), svg.Series("int8", [0, 1], [1, 2])],
                      x_label="t (s)", y_label="KV (MB)", stacked=True)
    paths = [p for p in ET.fromstring(chart).iter(f"{NS}path") if p.get("class") == "series"]
    assert [p.get("data-points") for p in paths] == ["0,3 1,4", "0,1 1,2"]


def test_a_cut_bar_keeps_its_true_value():
    chart = svg.bars(["tok/s"], [("a", [890.0]), ("b", [-20.0])], y_label="error (%)",
                     clip=(-100, 200))
    root = ET.fromstring(chart)
    bars = {b.get("data-series"): b for b in root.iter(f"{NS}rect") if b.get("class") == "bar"}
    assert bars["a"].get("data-value") == "890" and bars["b"].get("data-value") == "-20"
    ticks = [float(t.text) for t in root.iter(f"{NS}text") if t.get("text-anchor") == "end"
             and t.text.lstrip("-").isdigit()]
    assert max(ticks) < 890  # the axis stops near the cut, not at the outlier


def test_gantt_has_one_bar_per_span_and_one_lane_per_device():
    spans = [svg.Span("gpu", 0, 1, "prefill"), svg.Span("npu", 1, 1e-9, "decode"),
             svg.Span("gpu", 2, 1, "decode")]
    root = ET.fromstring(svg.gantt(spans, x_label="t (ms)"))
    bars = [r for r in root.iter(f"{NS}rect") if r.get("class") == "span"]
    assert [b.get("data-key") for b in bars] == ["prefill", "decode", "decode"]
    assert min(float(b.get("width")) for b in bars) == 0.5  # short ops stay visible
    assert len({b.get("y") for b in bars}) == 2
