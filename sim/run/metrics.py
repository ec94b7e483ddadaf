"""Run metrics with the names of the JSON contract (docs/architecture.md#the-json-contract)."""

from __future__ import annotations

import math

import numpy as np

from sim.engine.state import COMPLETED, FAILED, RunState


def summary(values: np.ndarray) -> dict[str, float | None]:
    """Mean and percentiles; None for an empty set (JSON null), never NaN."""
    if len(values) == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": _f(values.mean()), "p50": _f(p50), "p90": _f(p90), "p99": _f(p99)}


def _f(x: float) -> float:
    """Round to 12 significant digits: identical across platforms' last-bit noise."""
    return float(f"{float(x):.12g}")


def run_metrics(state: RunState, output_tokens: np.ndarray, spec_proposed: int,
                spec_accepted: int, buffer_stats, num_rejected: int = 0) -> dict:
    """``num_rejected``: requests turned away by a full waiting queue (among ``num_failed``)."""
    done = state.status == COMPLETED
    start = float(np.nanmin(state.arrival_s)) if np.isfinite(state.arrival_s).any() else 0.0
    ends = state.finish_s[np.isfinite(state.finish_s)]
    makespan = float(ends.max() - start) if len(ends) else 0.0
    out_tokens = int(state.generated[done].sum())
    ttft = (state.first_token_s - state.arrival_s)[done]
    multi = done & (output_tokens > 1)
    decode_s = (state.finish_s - state.first_token_s)[multi]
    tpot = decode_s / (output_tokens[multi] - 1)
    steps = state.num_steps
    return {
        "throughput_tok_s": _f(out_tokens / makespan) if makespan > 0 else None,
        "makespan_s": _f(makespan),
        "output_tokens": out_tokens,
        "num_requests": int(len(state.status)),
        "num_completed": int(done.sum()),
        "num_failed": int((state.status == FAILED).sum()),
        "num_rejected": int(num_rejected),
        "ttft_s": summary(ttft),
        "tpot_s": summary(tpot),
        "e2e_s": summary((state.finish_s - state.arrival_s)[done]),
        "decode_tok_s": _f(1.0 / np.mean(tpot)) if len(tpot) and np.mean(tpot) > 0 else None,
        "kv_peak_bytes": int(state.kv_peak_bytes),
        "kv_fp16_equiv_peak_bytes": int(state.kv_fp16_equiv_peak_bytes),
        "kv_memory_saved_frac": _f(1 - state.kv_peak_bytes / state.kv_fp16_equiv_peak_bytes)
        if state.kv_fp16_equiv_peak_bytes else None,
        "kv_bytes_by_precision": state.kv_bytes_by_precision_at_peak,
        "spec_acceptance_rate": _f(spec_accepted / spec_proposed) if spec_proposed else None,
        "devices": {name: {"busy_s": _f(busy), "busy_frac": _f(min(busy / makespan, 1.0))
                           if makespan > 0 else 0.0}
                    for name, busy in sorted(state.device_busy_s.items())},
        "buffers": {"num_allocs": buffer_stats.num_allocs,
                    "alloc_bytes": buffer_stats.alloc_bytes,
                    "num_reuses": buffer_stats.num_reuses,
                    "copy_bytes": buffer_stats.copy_bytes,
                    "alloc_s": _f(state.alloc_s),
                    "efficiency_frac": _f(buffer_stats.efficiency_frac)},
        "engine": {"num_prefill_steps": steps["prefill"], "num_decode_steps": steps["decode"],
                   "mean_decode_batch": _f(state.batch_tokens_sum["decode"] / steps["decode"])
                   if steps["decode"] else 0.0,
                   "max_batch": state.batch_size_max},
    }


def metric_value(metrics: dict, dotted_name: str) -> float | None:
    """The number at a dotted path of a metrics dict (``"ttft_s.p50"``:
    ``metrics["ttft_s"]["p50"]``); None when a part is missing or the value is not a number."""
    node = metrics
    for part in dotted_name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float)) else None


def is_finite_json(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(is_finite_json(v) for v in value.values())
    return True
