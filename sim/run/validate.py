"""Prediction against measurement (docs/architecture.md#the-validation-method): the same scenario
variant, simulated under a cost model and measured on a real backend with identical requests (same
seed, same prompt and output lengths, output lengths forced), compared metric by metric and request
by request.

Signed relative error = (predicted - measured) / measured: positive means the simulator
over-predicts.  ``None`` where either side is missing or the measurement is 0.
"""

from __future__ import annotations

import numpy as np

from sim.config.scenario import Scenario
from sim.engine.state import COMPLETED, RunState
from sim.run.metrics import metric_value, summary
from sim.run.runner import RunOutput

# the dotted metrics compared (docs/architecture.md#the-json-contract)
COMPARED = ("throughput_tok_s", "makespan_s", "decode_tok_s", "ttft_s.p50", "ttft_s.p90",
            "tpot_s.p50", "tpot_s.p90", "e2e_s.p50", "e2e_s.p90", "kv_peak_bytes",
            "kv_fp16_equiv_peak_bytes", "spec_acceptance_rate")


def relative_error(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or measured == 0:
        return None
    return float(f"{(predicted - measured) / measured:.12g}")


def compare(predicted: RunOutput, measured: RunOutput) -> dict:
    """``{"predicted", "measured", "relative_error", "per_request", "engine_state",
    "same_prefill_batches"}`` for one variant.  ``per_request``: percentiles of the signed
    relative error of each request's TTFT and end-to-end time (requests completed in both
    runs); ``same_prefill_batches``: whether both runs admitted the same requests together."""
    pm, mm = predicted.metrics, measured.metrics
    errors = {name: relative_error(metric_value(pm, name), metric_value(mm, name))
              for name in COMPARED}
    ps, ms = predicted.state, measured.state
    both = (ps.status == COMPLETED) & (ms.status == COMPLETED)
    per_request = {}
    for name, p_end, m_end in (("ttft_s", ps.first_token_s, ms.first_token_s),
                               ("e2e_s", ps.finish_s, ms.finish_s)):
        p = (p_end - ps.arrival_s)[both]
        m = (m_end - ms.arrival_s)[both]
        ok = m > 0
        per_request[name] = summary((p[ok] - m[ok]) / m[ok]) | {
            "max_abs": float(f"{np.abs((p[ok] - m[ok]) / m[ok]).max():.12g}") if ok.any()
            else None}
    engine = {side: {"engine": run.metrics["engine"],
                     "kv_bytes_by_precision": run.metrics["kv_bytes_by_precision"]}
              for side, run in (("predicted", predicted), ("measured", measured))}
    return {"predicted": pm, "measured": mm, "relative_error": errors,
            "per_request": per_request, "engine_state": engine,
            "same_prefill_batches": prefill_batches(ps) == prefill_batches(ms)}


def prefill_batches(state: RunState) -> list[tuple[int, ...]]:
    """The requests admitted together (one prefill step each), in order of admission.  Where
    the two runs differ, timing changed the schedule, and metrics that depend on it (the KV
    peak under continuous batching, say) may differ for that reason alone."""
    batches: dict[float, list[int]] = {}
    for rid in np.argsort(state.admitted_s, kind="stable").tolist():
        t = float(state.admitted_s[rid])
        if not np.isnan(t):  # never admitted
            batches.setdefault(t, []).append(rid)
    return [tuple(b) for b in batches.values()]


def conditioned_on(scn: Scenario, measured: RunOutput) -> tuple[Scenario, dict]:
    """What the prediction takes from the measurement, not from the scenario: the per-token
    acceptance of the drafts (a property of model, draft source and text that the simulator
    does not predict), accepted / (accepted + rejections + empty proposals) over the measured
    draft requests: the simulator always drafts when asked, so a request that found no draft
    (an n-gram without a match) counts as a first token rejected.  The simulator then draws
    acceptance with that probability; what validate checks is the time and memory that follow
    from it; ``acceptance_replay`` goes further and replays each request's measured outcomes.
    Nothing is taken when speculation is off."""
    report = measured.report
    accepted = report.draft_accepted if report else 0
    misses = report.draft_rejections + report.draft_empty if report else 0
    if scn.policies.speculation.kind == "off" or accepted + misses == 0:
        return scn, {}
    alpha = float(f"{accepted / (accepted + misses):.6g}")
    setup = scn.speculation.model_copy(update={"alpha": alpha})
    return scn.model_copy(update={"speculation": setup}), {"speculation.alpha": alpha}


def acceptance_replay(measured: RunOutput) -> dict[int, list[int]] | None:
    """Per request, the accepted count of each measured proposal, in order: the simulator
    replays them (its k may differ: a count is capped at the k it drafts), so requests advance
    as they did for real; beyond the record it draws with the measured ``alpha``."""
    report = measured.report
    log = report.accepted_log if report else None
    if not log:
        return None
    # with the drafts each proposal held: an empty or short one (prompt lookup found fewer
    # than k) is replayed as such, not as k drafts rejected (which would read as a low
    # acceptance to a policy that decides on it)
    sizes = report.proposed_log
    return {rid: (list(zip(sizes[rid], counts)) if len(sizes.get(rid, ())) == len(counts)
                  else list(counts)) for rid, counts in log.items()}
