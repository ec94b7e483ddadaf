"""The building blocks of the Plotly report pages: units (``sim.report.fmt``), figures
(``sim.report.plot``: axes from zero, the y = x line, every timeline op, WebGL past the
threshold, the front drawn on top) and the chart HTML (JSON that cannot close its script)."""

from __future__ import annotations

import json
import math

import pytest

from sim.report import fmt, plot, style
from sim.report.files import Span
from tests.sim.report import pages


@pytest.mark.parametrize(("value", "text"), [
    (64e6, "64 MB"), (64000000.0, "64 MB"), (1.5e9, "1.5 GB"), (2048, "2.05 kB"), (512, "512 B"),
    (None, "-"), (math.nan, "-")])
def test_bytes(value, text):
    assert fmt.format_bytes(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (0.0459, "45.9 ms"), (2.5, "2.5 s"), (1.5, "1.5 s"), (8e-5, "80 us"), (0, "0 s"),
    (None, "-")])
def test_seconds(value, text):
    assert fmt.format_seconds(value) == text


@pytest.mark.parametrize(("name", "value", "text"), [
    ("engine.kv_budget_bytes", 64000000.0, "64 MB"), ("ttft_p50_s", 0.155, "155 ms"),
    ("ttft_s.p50", 0.4291, "429 ms"), ("kv_memory_saved_frac", 0.473, "47.3%"),
    ("quality_pct", 99.5, "99.50%"), ("throughput_tok_s", 97.01, "97.01 tok/s"),
    ("policies.tiering", "kivi(bits=int4)", "kivi(bits=int4)"),
    ("workload.arrival.concurrency", 16, "16"), ("decode_tok_s", None, "-")])
def test_values_are_formatted_by_what_their_name_measures(name, value, text):
    assert fmt.format_value(name, value) == text


def test_units_of_axes():
    assert fmt.bytes_unit(26.9e6) == (1e-6, "MB") and fmt.bytes_unit(900) == (1.0, "B")
    assert fmt.time_unit(15.2) == (1.0, "s") and fmt.time_unit(0.5) == (1e3, "ms")
    assert fmt.scaled([1.0, None, math.inf], 2.0) == [2.0, None, None]


def test_a_chart_is_a_div_and_its_figure_as_json_that_cannot_close_its_script():
    fig = plot.scatter_fig([plot.points("a</script><b>", [1.0, math.nan], [2.0, 3.0],
                                        ["x", "y"], "#000000")],
                           title='t "quoted"', x_title="x (MB)", y_title="y (ms)")
    html = plot.chart(fig, "a caption <b>")
    assert "</script><b>" not in html.split('class="figure">', 1)[1].rsplit("</script>", 1)[0]
    [back] = pages.figures(html)
    assert back["data"][0]["name"] == "a</script><b>"
    assert back["data"][0]["x"] == [1.0, None]  # NaN: a gap, valid JSON
    assert back["layout"]["xaxis"]["rangemode"] == "tozero"  # non-negative: from 0
    assert back["config"]["displaylogo"] is False
    assert "a caption &lt;b&gt;" in html


def test_predicted_against_measured_shares_one_range_with_the_y_equals_x_line():
    fig = plot.scatter_fig([plot.points("v", [10.0, 20.0], [12.0, 18.0], ["", ""], "#000")],
                           title="m", x_title="measured", y_title="predicted", diagonal=True)
    line, points = fig["data"]
    assert line["line"]["dash"] == "dash" and line["x"] == line["y"] and line["x"][0] == 0.0
    assert fig["layout"]["xaxis"]["range"] == fig["layout"]["yaxis"]["range"]
    wide = plot.scatter_fig([plot.points("v", [0.01, 100.0], [0.02, 90.0], ["", ""], "#000")],
                            title="m", x_title="x", y_title="y", diagonal=True)
    assert wide["layout"]["xaxis"]["type"] == "log" and wide["layout"]["title"]["text"] == "m (log)"


def test_signed_bars_show_zero_and_stop_at_the_clip():
    fig = plot.bar_fig(["tok/s"], [("a", [890.0], ["a: +890%"]), ("b", [-20.0], ["b: -20%"])],
                       {"a": "#111111"}, title="e", y_title="%", signed=True, clip=200)
    assert fig["layout"]["yaxis"]["range"] == [-22.0, 200]
    assert fig["data"][0]["y"] == [890.0]  # the value kept; its hover says it
    assert fig["data"][1]["marker"]["color"] == style.OTHER


def test_boxes_merge_into_one_trace_per_series():
    fig = plot.box_fig([("TTFT", "a", [1.0, 2.0], ["r0", "r1"]), ("TTFT", "b", [3.0], ["r2"]),
                        ("E2E", "a", [4.0], ["r0"])], style.TIMES, title="b", y_title="%")
    assert [(t["name"], t["x"]) for t in fig["data"]] == [("TTFT", ["a", "a", "b"]),
                                                           ("E2E", ["a"])]
    assert fig["data"][0]["marker"]["color"] == style.TIMES["TTFT"]


def _spans(n: int) -> list[Span]:
    ops = ("prefill", "decode", "mystery")
    return [Span("gpu:0" if i % 2 else "cpu", i * 0.01, 0.005, ops[i % 3], f"batch {i}")
            for i in range(n)]


@pytest.mark.parametrize("n", [30, plot.GL_THRESHOLD + 1])
def test_a_timeline_draws_every_op_coloured_by_kind(n):
    fig = plot.timeline_fig(_spans(n), title="t", time_factor=1e3, time_title="ms", unit="ms")
    assert len(pages.timeline_ops(fig)) == n
    assert {t["type"] for t in fig["data"]} == ({"scattergl"} if n > plot.GL_THRESHOLD
                                                else {"bar"})
    colors = {t["name"]: t.get("marker", t.get("line"))["color"] for t in fig["data"]}
    assert colors == {"prefill": style.OPS["prefill"], "decode": style.OPS["decode"],
                      "mystery": style.OTHER}
    assert fig["layout"]["yaxis"]["categoryarray"] == ["gpu:0", "cpu"]
    assert fig["layout"]["xaxis"]["range"] == [0, pytest.approx((n - 1) * 10 + 5)]
    assert "batch" in fig["data"][0]["text"][0]


def test_series_and_side_colours_are_stable():
    assert style.series_colors(["b", "a", "b"]) == {"b": style.SERIES[0], "a": style.SERIES[1]}
    sides = style.side_colors(["roofline", "measured", "calibrated"])
    assert sides["measured"] == style.SIDES["measured"]
    assert sides["roofline"] == style.SIDES["predicted"] != sides["calibrated"]
    assert style.device_color("gpu:1") == style.DEVICES["gpu"]
    assert style.device_color("cpu (2 threads)") == style.DEVICES["cpu"]
    # the sweep's meanings never share a colour
    assert len(set(style.PARETO.values())) == 3
    assert json.dumps(style.PARETO_MARKER)  # plain data, for the figure JSON
