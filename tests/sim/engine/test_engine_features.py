"""Engine features of the policy families: replayed acceptance traces, buffer reallocation
copies, re-tiering costs, and the quality signal."""

from __future__ import annotations

from pathlib import Path

import scenarios
from sim.config.scenario import resolve_runs
from sim.run.runner import run_scenario


def run(name: str, sets: list[str], variant: str | None = None):
    path = scenarios.locate(name)
    for v, scn in resolve_runs(path, sets + ["cost_models=[roofline]"]):
        if variant is None or v == variant:
            return run_scenario(scn, v, "roofline", path.parent)
    raise KeyError(variant)


def test_a_recorded_acceptance_trace_is_replayed_in_order(tmp_path: Path):
    trace = tmp_path / "acceptance.txt"
    trace.write_text("1, 1, 1, 0\n" * 8)  # with k = 4: three accepted, then a rejection
    out = run("spec-high-acceptance", [f"speculation.acceptance_trace={trace}"], "fixed-4")
    # per-token estimate accepted / (accepted + rejections) = 3 / (3 + 1) on every step
    assert out.metrics["spec_acceptance_rate"] == 0.75
    # every verify pass emits 3 accepted + 1 token: 256 tokens take 1 prefill + 64 steps
    assert out.metrics["engine"]["num_decode_steps"] == 6 * 64


def test_contiguous_kv_charges_a_copy_on_every_exact_reallocation():
    sets = ["engine.contiguous_kv=true", "workload.num_requests=2"]
    exact = run("paper-ryzen-ai", sets + ["policies.buffers.kind=exact"], "baseline")
    adaptive = run("paper-ryzen-ai", sets + ["policies.buffers.kind=adaptive"], "baseline")
    paged = run("paper-ryzen-ai", ["workload.num_requests=2"], "baseline")
    steps = exact.metrics["engine"]["num_decode_steps"]
    assert exact.metrics["buffers"]["num_allocs"] >= 3 * steps  # logits, hidden, kv every step
    assert exact.metrics["buffers"]["copy_bytes"] > 0
    assert adaptive.metrics["buffers"]["copy_bytes"] < exact.metrics["buffers"]["copy_bytes"] / 100
    assert exact.metrics["decode_tok_s"] < 0.9 * adaptive.metrics["decode_tok_s"]
    assert paged.metrics["buffers"]["copy_bytes"] == 0


def test_retiering_moves_are_charged_to_the_steps_that_follow():
    fp16 = run("kv-long-context", ["workload.num_requests=4"], "fp16")
    streaming = run("kv-long-context", ["workload.num_requests=4"], "streaming")
    assert streaming.metrics["kv_moves"].get("evict", 0) > 0
    assert fp16.metrics["kv_moves"] == {}
    assert streaming.metrics["quality"]["delta_ppl_mean"] > 0.0
    assert fp16.metrics["quality"] == {"delta_ppl_mean": 0.0, "delta_ppl_max": 0.0,
                                       "quality_pct": 100.0}
