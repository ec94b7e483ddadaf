"""One colour (and marker) per meaning, for every chart of the product: the ``infer-os report``
pages and the live dashboard of ``infer-os serve`` (adapters/serving/static/dashboard.html keeps
the same values in its ``COLORS``; tests/sim/report/test_style.py checks they agree).

A meaning keeps its colour on every chart of a page: an op kind is the same colour in every
timeline and in the per-step error charts, a precision in every KV chart, "Pareto front" in every
sweep chart.  Variants (and other open-ended series) take ``SERIES`` in order of first appearance.
"""

from __future__ import annotations

from collections.abc import Iterable

# open-ended series (variants, cost models): Okabe-Ito first (colour-blind safe), then Tableau
SERIES = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000",
          "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF", "#F0E442")
OTHER = "#b0b0b0"  # anything not named below

# the ops of a step (timelines, per-step errors); the dashboard's timeline uses the same
OPS = {"prefill": "#1f77b4", "decode": "#2ca02c", "verify": "#9467bd", "draft": "#17becf",
       "retier": "#ff7f0e", "alloc": "#8c564b", "slow": "#d62728", "step": "#444444"}
# KV bytes by precision (KV charts); the dashboard's KV chart uses the same
PRECISIONS = {"fp16": "#3b6fb6", "int8": "#2ca58d", "int4": "#f2b134", "int2": "#e4572e",
              "offloaded": "#8c8c8c", "evicted": "#c9c9c9", "backup": "#6f6f6f"}
# devices (timeline lanes, device names in legends)
DEVICES = {"gpu": "#76b900", "npu": "#ed1c24", "cpu": "#0071c5"}

# sweeps: the front on top, big and saturated; dominated points muted
PARETO = {"Pareto front": "#c2185b", "on the 3-way front only": "#f59f00",
          "dominated": "#9aa5b1"}
PARETO_MARKER = {"Pareto front": {"size": 10, "symbol": "diamond", "opacity": 1.0,
                                  "line": {"width": 1, "color": "#ffffff"}},
                 "on the 3-way front only": {"size": 8, "symbol": "circle", "opacity": 0.95,
                                             "line": {"width": 1, "color": "#ffffff"}},
                 "dominated": {"size": 5, "symbol": "circle", "opacity": 0.35}}

# validation: the two sides of a comparison; latencies (per-request errors here, the latency
# chart of the dashboard)
SIDES = {"predicted": "#e8590c", "measured": "#1c7ed6"}
TIMES = {"TTFT": "#ae3ec9", "TPOT": "#1f77b4", "E2E": "#0ca678"}
IDENTITY = "#868e96"  # the y = x line of predicted-against-measured charts
ZERO = "#495057"  # the zero line of signed errors


def op_color(op: str) -> str:
    return OPS.get(op, OTHER)


def precision_color(precision: str) -> str:
    return PRECISIONS.get(precision, OTHER)


def device_color(device: str) -> str:
    """A device's colour by its kind: "gpu:0", "npu", "cpu (2 threads)" -> gpu, npu, cpu."""
    kind = device.split(":")[0].split()[0].lower() if device else ""
    return DEVICES.get(kind, OTHER)


def side_color(side: str) -> str:
    """"measured" or a prediction ("predicted", "predicted (roofline)", a cost model's name)."""
    return SIDES["measured"] if side.startswith("measured") else SIDES["predicted"]


def series_colors(names: Iterable[str]) -> dict[str, str]:
    """A stable colour per distinct name, in order of first appearance."""
    out: dict[str, str] = {}
    for name in names:
        if name not in out:
            out[name] = SERIES[len(out) % len(SERIES)]
    return out


def side_colors(names: Iterable[str]) -> dict[str, str]:
    """Colours for the sides of a comparison: "measured" its own, the first prediction (a cost
    model) ``SIDES["predicted"]``, further cost models from ``SERIES``."""
    out: dict[str, str] = {}
    extra = iter(SERIES)
    for name in names:
        if name in out:
            continue
        if name.startswith("measured"):
            out[name] = SIDES["measured"]
        elif SIDES["predicted"] not in out.values():
            out[name] = SIDES["predicted"]
        else:
            out[name] = next(extra)
    return out
