"""Shadow prediction: the cost model asked, step by step, about the exact steps a measured run took.

A free-running prediction mixes two errors: the cost model's (how long a given step takes) and
the schedule's (the simulated run takes other steps: other batches, draft lengths, admissions).
The shadow removes the second: while ``measure`` or ``validate`` runs on a real backend,
``ShadowRecorder`` keeps every ``StepPlan`` the engine executed with its measured segments; after
the run the cost model predicts each of those plans (``predict``), and the signed error per step
kind (``prefill``, ``decode``, ``verify``, ``draft``, ``retier``; ``step`` = the whole step) is the
cost model's error alone. The work a step did that depends on the text (an n-gram draft's lookups:
``StepResult.draft_scan_tokens``, ``draft_compares``, ``draft_hits``) is held fixed as the draft
length is. ``--out`` writes
``steps.{variant}.csv``: one row per step of every repeat (``repeat``, 1 to N), the plan's
summary, predicted and measured seconds per kind.

Signed relative error = (predicted - measured) / measured, as ``validate``'s; a kind is counted
in a step only when both sides have it and the measured time is positive.

**The noise floor** (``validate --repeats N``, N >= 2): the schedule of a deterministic run repeats,
so most steps have a twin in every other repeat with the very same plan (same step index, batch,
contexts, precisions, draft length, n-gram lookups' work).  No model that prices a plan can tell
the twins apart, so what they differ by is the machine's noise at that step, and the best any cost
model can do is their expected time.  Per kind, the floor is the median over such steps of
``|m_i - mean(m_others)| / m_i * sqrt((n - 1) / n)`` (the leave-one-out mean of the n - 1 other
repeats estimates the expected time; the factor takes the estimate's own noise out, for
independent repeats of equal spread).  It includes the drift between repeats (a slow minute),
which no model sees either.  ``floor_abs`` beside it is the model's median |error| over the same
matched steps: a kind whose ``floor_abs`` stands well above its ``floor`` has an error the
cost model can remove; one at its floor has not.  Steps with no twin (a dynamic controller that
took another path in another repeat) are left out of both.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sim.engine.executor import StepPlan, StepResult
from sim.engine.faults import StepFailed

KINDS = ("prefill", "decode", "verify", "draft", "retier")
PLAN_COLUMNS = ("phase", "batch", "num_tokens", "num_rows", "attended_pairs", "kv_read_bytes",
                "kv_dequant_values", "draft_len", "kv_copy_bytes", "kv_requant_values",
                "kv_recompute_tokens", "kv_shift_bytes", "kv_shift_passes",
                "draft_scan_tokens", "draft_compares", "draft_hits")


@dataclass
class ShadowRecorder:
    """Wraps a real executor (the executor protocol, ``sim.engine.executor``): every step it runs
    is kept, plan and measured segments, for ``predict`` after the run."""

    inner: object
    steps: list[tuple[StepPlan, dict[str, float], float]] = field(default_factory=list)

    def __post_init__(self):
        self.name, self.capabilities = self.inner.name, self.inner.capabilities

    @property
    def attention(self):
        return self.inner.attention

    def devices(self):
        return self.inner.devices()

    def release(self, request_id: int) -> None:
        self.inner.release(request_id)

    def report(self):
        return self.inner.report()

    def __getattr__(self, name):  # anything else a caller reads off the real executor
        return getattr(self.__dict__["inner"], name)

    def execute(self, env, plan: StepPlan):
        try:
            result = yield from self.inner.execute(env, plan)
        except StepFailed as failed:
            if failed.result is not None:
                self._keep(plan, failed.result)
            raise
        self._keep(plan, result)
        return result

    def _keep(self, plan: StepPlan, result: StepResult) -> None:
        measured: dict[str, float] = {}
        for _device, op, seconds in result.segments:
            measured[op] = measured.get(op, 0.0) + seconds
        if result.draft_scan_tokens is not None:  # data-dependent work, held fixed as the
            plan = replace(plan, draft_scan_tokens=result.draft_scan_tokens,  # draft length is
                           draft_compares=result.draft_compares, draft_hits=result.draft_hits)
        self.steps.append((plan, measured, result.elapsed_s))


def predict(steps: list, cost_model) -> list[dict]:
    """One row per measured step: the plan's summary, and per kind the predicted and measured
    seconds (``predicted_step_s`` / ``measured_step_s``: the whole step)."""
    rows = []
    work_s = getattr(cost_model, "retier_work_s", None)  # the calibrated model's
    for i, (plan, measured, elapsed) in enumerate(steps):
        predicted: dict[str, float] = {}
        for s in cost_model.segments(plan):
            predicted[s.op] = predicted.get(s.op, 0.0) + s.variable_s + s.fixed_s
        row = {"step": i, "phase": plan.phase, "batch": len(plan.request_ids)}
        for col in PLAN_COLUMNS[2:]:
            row[col] = getattr(plan, col)
        for kind in KINDS:
            row[f"predicted_{kind}_s"] = predicted.get(kind)
            row[f"measured_{kind}_s"] = measured.get(kind)
        row["predicted_step_s"] = sum(predicted.values())
        row["measured_step_s"] = elapsed
        row["predicted_retier_work_s"] = None if work_s is None else work_s(plan)
        rows.append(row)
    return rows


# kinds read apart by what the step did: the re-tier steps that move blocks (quantized as they
# fill, re-quantized, copied, recomputed: the re-tier/restore) from those that only check
# the tiers (tens of microseconds, nothing moves); n-gram lookups from draft passes
SUBKINDS = {
    "retier: moves": ("retier", lambda r: (r.get("predicted_retier_work_s") or 0) > 0),
    "retier: checks only": ("retier", lambda r: r.get("predicted_retier_work_s") == 0),
    "draft: n-gram": ("draft", lambda r: r.get("draft_scan_tokens") is not None),
    "draft: passes": ("draft", lambda r: r.get("draft_scan_tokens") is None),
}


def summarize(rows: list[dict]) -> dict:
    """Per kind (and ``step``, and the ``SUBKINDS``): ``{"steps", "median", "p10", "p90",
    "median_abs"}`` of the signed relative error over the steps that have it, and where rows
    of several repeats (``repeat``) have twins, the kind's ``noise_floor``.  A sub-kind is
    given only when it holds some but not all of its kind's steps."""
    out, twins = {}, _twins(rows)
    for name, kind, keep in [(k, k, None) for k in (*KINDS, "step")] + [
            (name, kind, keep) for name, (kind, keep) in SUBKINDS.items()]:
        errors = []
        for r in rows:
            if keep is not None and not keep(r):
                continue
            p, m = r.get(f"predicted_{kind}_s"), r.get(f"measured_{kind}_s")
            if p is not None and m is not None and m > 0:
                errors.append((p - m) / m)
        if not errors:
            continue
        if keep is not None and len(errors) == out.get(kind, {}).get("steps"):
            continue  # all of its kind: said once
        e = np.asarray(errors)
        p10, p50, p90 = np.percentile(e, [10, 50, 90])
        out[name] = {"steps": len(e), "median": _f(p50), "p10": _f(p10), "p90": _f(p90),
                     "median_abs": _f(np.median(np.abs(e)))}
        floor = noise_floor(rows, kind, keep, twins)
        if floor is not None:
            out[name] |= floor
    return out


def _twins(rows: list[dict]) -> list[list[dict]]:
    """Rows of different repeats (``repeat``) with the same ``variant`` (where rows carry one),
    step index and plan, grouped: the groups of two or more."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("repeat") is None:
            continue
        key = (r.get("variant"), str(r["step"]), *(str(r.get(c)) for c in PLAN_COLUMNS))
        groups.setdefault(key, []).append(r)
    return [g for g in groups.values() if len(g) > 1 and len({r["repeat"] for r in g}) == len(g)]


def noise_floor(rows: list[dict], kind: str, keep=None,
                twins: list[list[dict]] | None = None) -> dict | None:
    """The noise floor of ``kind`` over the steps of ``rows`` that have twins in other repeats
    (see the module's docstring) -> ``{"floor", "floor_abs", "floor_steps"}``, or None where
    no step has a twin.  ``keep`` selects a sub-kind's steps; ``twins``: ``_twins(rows)``,
    where the caller has them already."""
    floors, model = [], []
    for group in _twins(rows) if twins is None else twins:
        if keep is not None:
            group = [r for r in group if keep(r)]
        pairs = [(r.get(f"predicted_{kind}_s"), r.get(f"measured_{kind}_s")) for r in group]
        pairs = [(p, m) for p, m in pairs if p is not None and m is not None and m > 0]
        n = len(pairs)
        if n < 2:
            continue
        total = sum(m for _, m in pairs)
        for p, m in pairs:
            others = (total - m) / (n - 1)
            floors.append(abs(others - m) / m * np.sqrt((n - 1) / n))
            model.append(abs(p - m) / m)
    if not floors:
        return None
    return {"floor": _f(np.median(floors)), "floor_abs": _f(np.median(model)),
            "floor_steps": len(floors)}


def _f(x: float) -> float:
    return float(f"{float(x):.6g}")


def write_steps_csv(rows: list[dict], path: Path) -> None:
    from sim.engine.trace_sink import write_atomic

    if not rows:
        write_atomic(path, "step\n")
        return
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else (f"{v:.9g}" if isinstance(v, float) else v)
                         for k, v in r.items()})
    write_atomic(path, buf.getvalue())


def shadow_of(runs: list, cost_model) -> dict | None:
    """The shadow summary over the steps of every measured run kept with ``shadow`` (the
    repeats of one variant; None without one), predicted by ``cost_model``
    (``sim.run.runner.calibrated_model``).  Each run keeps its own rows (``shadow_rows``: the
    schedule replay reads the first's); ``pooled_rows`` gives them together."""
    runs = [r for r in runs if r.shadow_steps]
    if not runs or cost_model is None:
        return None
    for run in runs:
        run.shadow_rows = predict(run.shadow_steps, cost_model)
    return summarize(pooled_rows(runs))  # (the repeats tell the noise floor)


def pooled_rows(runs: list) -> list[dict]:
    """Every run's shadow rows, each led by its ``repeat`` (1 to N, in the order measured)."""
    return [{"repeat": i, **row} for i, run in enumerate(runs, 1)
            for row in (getattr(run, "shadow_rows", None) or [])]


def write_shadow_csvs(out_dir: Path, rows: dict[str, list[dict]]) -> None:
    """``steps.{variant}.csv`` for every variant with shadow rows (``pooled_rows``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for variant, variant_rows in rows.items():
        if variant_rows:
            write_steps_csv(variant_rows, out_dir / f"steps.{variant}.csv")
