"""The bundled scenarios show what they are bundled to show (each run once per module)."""

from __future__ import annotations

import json
from functools import cache

import pytest

import scenarios
from sim.config.scenario import resolve_runs
from sim.run.output import add_speedups, chrome_trace
from sim.run.runner import RunOutput, run_scenario


@cache
def runs(name: str) -> dict[tuple[str, str], RunOutput]:
    path = scenarios.locate(name)
    out = [run_scenario(scn, variant, cm, path.parent, record_trace=True)
           for variant, scn in resolve_runs(path, []) for cm in scn.cost_models]
    add_speedups(out)
    return {(r.variant, r.cost_model): r for r in out}


def metric(name: str, variant: str, key: str, cost_model: str = "roofline"):
    return runs(name)[(variant, cost_model)].metrics[key]


def test_every_bundled_scenario_is_listed():
    assert {"quickstart", "paper-ryzen-ai", "sim-scale", "kv-long-context", "spec-low-acceptance",
            "spec-high-acceptance", "scheduling-ryzen-ai"} <= set(scenarios.names())


def test_paper_coefficient_model_reproduces_the_papers_headline_figures():
    assert metric("paper-ryzen-ai", "baseline", "decode_tok_s", "coefficient") == \
        pytest.approx(16.79, rel=1e-6)
    assert metric("paper-ryzen-ai", "all-four", "decode_tok_s", "coefficient") == \
        pytest.approx(19.09, rel=1e-3)
    npu = metric("paper-ryzen-ai", "all-four+npu", "decode_tok_s", "coefficient")
    assert npu / 16.79 == pytest.approx(2.0, rel=5e-3)


def test_paper_roofline_stays_under_the_shared_bus_ceiling():
    # batch-1 decode of 3.8 GB of weights over 0.8 x 89.6 GB/s cannot pass ~19 tok/s
    for variant in ("baseline", "kv-quant", "all-four", "all-four+npu"):
        assert metric("paper-ryzen-ai", variant, "decode_tok_s") < 19.0


def test_paper_technique_variants_use_the_real_policies():
    scn = {v: s for v, s in resolve_runs(scenarios.locate("paper-ryzen-ai"), [])}
    assert scn["all-four+npu"].policies.tiering.kind == "progressive"
    assert scn["all-four+npu"].policies.buffers.kind == "adaptive"
    assert scn["all-four+npu"].policies.speculation.kind == "dynamic"
    assert scn["all-four+npu"].policies.scheduling.kind == "paper"
    assert metric("paper-ryzen-ai", "kv-quant", "kv_moves")  # progressive actually re-tiered


def test_progressive_saves_at_least_70_percent_of_kv_memory_on_long_contexts():
    m = runs("kv-long-context")[("progressive", "roofline")].metrics
    assert 1 - m["kv_peak_bytes"] / m["kv_fp16_equiv_peak_bytes"] >= 0.70
    assert metric("kv-long-context", "fp16", "kv_memory_saved_frac") == 0.0
    assert m["num_failed"] == 0


def test_quality_model_orders_the_tiering_policies():
    quality = {v: metric("kv-long-context", v, "quality")["delta_ppl_mean"]
               for v in ("fp16", "uniform-int8", "mikv", "streaming")}
    assert quality["fp16"] == 0.0
    assert 0.0 < quality["uniform-int8"] < quality["mikv"] < quality["streaming"]


@pytest.mark.parametrize("controller", ["dynamic", "goodput"])
def test_speculation_controllers_do_no_harm_when_acceptance_is_low(controller):
    off = metric("spec-low-acceptance", "off", "throughput_tok_s")
    mine = metric("spec-low-acceptance", controller, "throughput_tok_s")
    assert mine >= 0.97 * off
    assert metric("spec-low-acceptance", "fixed-4", "throughput_tok_s") < 0.9 * off


@pytest.mark.parametrize("controller", ["dynamic", "goodput"])
def test_speculation_controllers_pay_when_acceptance_is_high(controller):
    off = metric("spec-high-acceptance", "off", "throughput_tok_s")
    assert metric("spec-high-acceptance", controller, "throughput_tok_s") >= 1.3 * off
    assert metric("spec-high-acceptance", controller, "spec_acceptance_rate") == \
        pytest.approx(0.8, abs=0.05)


def _device_tracks(run: RunOutput) -> dict[str, set[str]]:
    """Chrome trace: device track name -> the ops seen on it."""
    trace = json.loads(json.dumps(chrome_trace(run)))
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e.get("pid") == 1 and e["name"] == "thread_name"}
    ops: dict[str, set[str]] = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e["pid"] == 1:
            ops.setdefault(names[e["tid"]], set()).add(e["name"])
    return ops


def test_scheduling_variants_have_different_device_timelines():
    tracks = {v: _device_tracks(runs("scheduling-ryzen-ai")[(v, "roofline")])
              for v in ("single-gpu", "paper", "amd-hybrid", "least-finish-time")}
    assert tracks["single-gpu"] == {"igpu": {"prefill", "decode", "alloc"}}
    assert tracks["paper"]["npu"] >= {"ffn"} and "attention" in tracks["paper"]["igpu"]
    assert tracks["amd-hybrid"]["npu"] - {"alloc"} == {"prefill"}
    assert "decode" in tracks["amd-hybrid"]["igpu"]
    assert len({frozenset((k, frozenset(v)) for k, v in t.items())
                for t in tracks.values()}) == 4
    for v in tracks:
        m = metric("scheduling-ryzen-ai", v, "ttft_s")
        assert m["p50"] > 0 and metric("scheduling-ryzen-ai", v, "decode_tok_s") > 0
