"""The tiering jobs a quality profile is fitted and checked on, run through the real paged KV
store (``infer-os calibrate-quality``, ``benchmarks/quality_fit.py``, ``quality_forms.py``).

Sixteen jobs span what the quality model charges: FP16 (the base), INT8 / INT4 / INT2 everywhere,
the mixed-precision policies (kivi, mikv), the evicting ones (h2o, streaming) and ``progressive``
at four device budgets.  Each runs over the same windows of text
(``adapters.decoding.perplexity.quality_run``: teacher-forced, chunks of 128 tokens, scored from
token 512), recording its perplexity, the attention mix it was scored under and its scored chunks.
The penalties are fitted on the ``train`` jobs (default int8, int4, int2, h2o: one per penalty)
by ``sim.quality.fit``; every other job is held out, and its prediction (through
``sim.quality.model``) is checked against the measurement and the measurement's own 90 % spread
(``adapters.decoding.quality_check.delta_ppl_spread``).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adapters.decoding.quality_check import (
    ABS_BOUND,
    SMALL,
    Chunks,
    measured_spread,
    within_bounds,
)
from sim.config.scenario import QualityConfig
from sim.errors import UserError
from sim.quality.fit import FITTED, Checked, QualityRun, fit_runs, predict

# key, tiering spec, device budget (x the FP16 bytes of the window)
JOBS = [
    ("fp16", {"kind": "fp16"}, 1.0),
    ("int8", {"kind": "uniform", "precision": "int8"}, 1.0),
    ("int4", {"kind": "uniform", "precision": "int4"}, 1.0),
    ("int2", {"kind": "uniform", "precision": "int2"}, 1.0),
    ("kivi", {"kind": "kivi"}, 1.0),
    ("kivi-r512", {"kind": "kivi", "residual_tokens": 512}, 1.0),
    ("mikv", {"kind": "mikv"}, 1.0),
    ("mikv-h10-r128", {"kind": "mikv", "heavy_frac": 0.1, "recent_tokens": 128}, 1.0),
    ("h2o", {"kind": "h2o"}, 1.0),
    ("h2o-h10-r128", {"kind": "h2o", "heavy_frac": 0.1, "recent_tokens": 128}, 1.0),
    ("streaming", {"kind": "streaming"}, 1.0),
    ("streaming-w256", {"kind": "streaming", "window_tokens": 256}, 1.0),
    ("progressive-1", {"kind": "progressive"}, 1.0),
    ("progressive-1.25", {"kind": "progressive"}, 1.25),
    ("progressive-1.5", {"kind": "progressive"}, 1.5),
    ("progressive-2", {"kind": "progressive"}, 2.0),
]
DEFAULT_TRAIN = ("int8", "int4", "int2", "h2o")
# what each job holds weight at, as its policy is built to (what a run measured decides the fit:
# ``unpriced``); lets a train set that cannot price a penalty be refused before the model runs
HOLDS = {"int8": ("int8",), "int4": ("int4",), "int2": ("int2",), "kivi": ("int2",),
         "kivi-r512": ("int2",), "mikv": ("int4",), "mikv-h10-r128": ("int4",),
         "h2o": ("missing",), "h2o-h10-r128": ("missing",), "streaming": ("missing",),
         "streaming-w256": ("missing",), "progressive-1": ("int8", "int4", "missing"),
         "progressive-1.25": ("int8", "int4"), "progressive-1.5": ("int8", "int4"),
         "progressive-2": ("int8",)}
FORM = ("delta_ppl = sum_b weight_b x penalty(precision_b), weight_b the block's attention share, "
        "1 / blocks at INT2 (sim/quality/model.py); penalties fitted by non-negative least "
        "squares on the train jobs")


def r6(x: float) -> float:
    return round(x, 6)


def job_names() -> list[str]:
    return [key for key, _, _ in JOBS]


def job_list(text: str, field: str = "--train") -> list[str]:
    """A comma-separated list of job names (not ``fp16``, the base, always run), checked."""
    names = [k.strip() for k in text.split(",") if k.strip()]
    known = job_names()[1:]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        what = f"unknown job {unknown[0]!r}" if unknown else "no job named"
        raise UserError(f"{what} (jobs: {', '.join(known)})", field=field)
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class JobRun:
    """One job's measurement: what the fit sees, and the scored chunks (for the spread)."""

    run: QualityRun
    chunks: Chunks | None  # None when the run was read back from a profile


def run_jobs(model, windows: list[list[int]],
             on_done: Callable[[str, float], None] | None = None,
             only: Sequence[str] | None = None) -> list[JobRun]:
    """The jobs of ``JOBS`` (``only`` these and ``fp16``, when given) over ``windows``
    (``on_done(name, ppl)`` after each)."""
    from adapters.decoding.perplexity import tiered_nll
    from sim.config.policy_registry import build as build_policy

    out = []
    for key, spec, budget in JOBS:
        if only is not None and key != "fp16" and key not in only:
            continue
        policy = build_policy("tiering", spec)  # a fresh copy per window: its state is per request
        per_window = [tiered_nll(model, ids, copy.deepcopy(policy), budget_frac=budget)
                      for ids in windows]
        passes = [p for w in per_window for p in w.quality_passes]
        run = QualityRun.of(key, sum(w.nll_sum for w in per_window),
                            sum(w.num_scored for w in per_window), passes)
        out.append(JobRun(run, Chunks.of(passes)))
        if on_done:
            on_done(key, run.ppl)
    return out


@dataclass(frozen=True)
class Row:
    """A job's measured delta-PPL beside the fitted prediction, with the measurement's spread."""

    checked: Checked
    spread: tuple[float, float] | None

    @property
    def role(self) -> str:
        c = self.checked
        return "base" if c.name == "fp16" else "train" if c.is_train else "held-out"

    @property
    def verdict(self) -> str | None:
        if self.spread is None:
            return None
        lo, hi = self.spread
        return "noise" if lo <= self.checked.predicted_delta_ppl <= hi else "model"

    @property
    def ok(self) -> bool:
        return within_bounds(self.checked.predicted_delta_ppl, self.checked.measured_delta_ppl)


def _base(jobs: Sequence[JobRun]) -> JobRun:
    return next(j for j in jobs if j.run.name == "fp16")


def fit(jobs: Sequence[JobRun], train: Sequence[str], source: str,
        spreads: dict[str, tuple[float, float]] | None = None,
        also: Sequence[Sequence[JobRun]] = (), prior: dict | None = None):
    """(QualityConfig, one ``Row`` per job).  The penalties each need a train job that holds
    their precision (int8, int4, int2 and missing attention): otherwise the fit cannot see them
    and a ``UserError`` at ``--train`` names the precision, unless ``prior`` (a quality
    profile's document) prices it: then it is the prior's, scaled to this text's FP16
    perplexity as the simulator scales a profile (``blind_from_prior``).  ``also``: other
    texts' jobs, whose train jobs join the fit (``sim.quality.fit.fit_runs``); check them with
    ``check_on``."""
    runs = [j.run for j in jobs]
    base = _base(jobs)
    others = [([j.run for j in js], _base(js).run) for js in also]
    blind = unpriced(jobs, train, also)
    if blind and prior is None:
        raise UserError(f"no train job holds {' or '.join(blind)}: the fit cannot price it "
                        f"(train: {', '.join(train)}; default: {','.join(DEFAULT_TRAIN)}; "
                        f"or take it from another text's profile with --prior)",
                        field="--train")
    fixed = blind_from_prior(prior, blind, base.run.ppl) if blind else None
    cfg, checked = fit_runs(runs, base.run, train, source, others, fixed)
    rows = []
    for c, j in zip(checked, jobs):
        if j.chunks is not None and base.chunks is not None:
            spread = measured_spread(base.chunks, j.chunks)
        else:
            spread = (spreads or {}).get(c.name)
        rows.append(Row(c, None if spread is None else tuple(spread)))
    return cfg, rows


def unpriced(jobs: Sequence[JobRun], train: Sequence[str],
             also: Sequence[Sequence[JobRun]] = ()) -> list[str]:
    """The penalties no train job (of this text or the ``also`` texts) holds any weight at."""
    chosen = [j.run for js in [jobs, *also] for j in js if j.run.name in train]
    return [p for p in FITTED if not any(r.charged_mix[p] > 0 for r in chosen)]


def blind_from_prior(prior: dict, blind: Sequence[str], base_ppl: float) -> dict[str, float]:
    """The penalties no train job prices, from a prior profile (``{"base_ppl": ..., "penalties":
    {...}}``), per unit at ``base_ppl``: each delta-PPL read relative to the prior's base and
    scaled to this one, the way the simulator reads a profile at another base perplexity."""
    scale = base_ppl / float(prior["base_ppl"])
    return {p: float(prior["penalties"][p]) * scale for p in blind}


def check_on(cfg, jobs: Sequence[JobRun], train: Sequence[str],
             spreads: dict[str, tuple[float, float]] | None = None) -> list[Row]:
    """A fitted ``cfg`` checked on another text's runs (a profile's ``stored_jobs``), each job
    predicted at that text's own FP16 perplexity (``validate-quality``'s relative reading:
    scaled by its base over ``cfg.base_ppl``).  The jobs named like the train jobs are marked
    train and left out of ``held_out_summary``: held-out policies on a held-out text remain."""
    base = _base(jobs).run
    scale = base.ppl / cfg.base_ppl
    placeholder = QualityConfig()
    rows = []
    for j in jobs:
        r = j.run
        checked = Checked(r.name, r.name in train, r.ppl - base.ppl,
                          predict(r.charged_mix, cfg) * scale,
                          predict(r.charged_mix, placeholder) * scale)
        spread = (spreads or {}).get(r.name)
        rows.append(Row(checked, None if spread is None else tuple(spread)))
    return rows


def held_out_summary(rows: Sequence[Row]) -> dict:
    """Over the held-out jobs: the median and worst |relative error| of all of them; the goal's
    two parts read apart (the median |relative error| of the jobs whose measured delta-PPL is
    0.1 or more, and how many of the others are within 0.05 absolute: a relative error of a
    near-zero change means little); how many meet the bound one by one (``within_bounds``); and
    how many lie inside their measured spread (None without spreads)."""
    held = [r for r in rows if r.role == "held-out"]
    errors = sorted(abs(r.checked.relative_error) for r in held
                    if not math.isnan(r.checked.relative_error))
    large = sorted(abs(r.checked.relative_error) for r in held
                   if r.checked.measured_delta_ppl >= SMALL)
    small = [r for r in held if r.checked.measured_delta_ppl < SMALL]

    def median(xs):
        return round(statistics.median(xs), 4) if xs else None
    return {"jobs": len(held),
            "median_abs_relative_error": median(errors),
            "max_abs_relative_error": round(errors[-1], 4) if errors else None,
            "large_jobs": len(large),
            "median_abs_relative_error_large": median(large),
            "small_jobs": len(small),
            "small_within_abs": sum(abs(r.checked.predicted_delta_ppl
                                        - r.checked.measured_delta_ppl) <= ABS_BOUND
                                    for r in small),
            "within_bound": sum(r.ok for r in held),
            "within_spread": sum(r.verdict == "noise" for r in held)
            if any(r.spread is not None for r in held) else None}


def profile(origin: dict, jobs: Sequence[JobRun], rows: Sequence[Row], cfg,
            train: Sequence[str]) -> dict:
    """The quality profile's document (``sim.config.quality_profile``): the fitted figures the
    simulator reads, and the record of where they came from (every job's measurement)."""
    summary = held_out_summary(rows)
    return {
        **origin,
        "form": FORM,
        "base_ppl": round(cfg.base_ppl, 4),
        "penalties": {name: r6(getattr(cfg, f"{name}_delta_ppl").value) for name in FITTED},
        "train": list(train),
        "held_out_abs_relative_error": {"median": summary["median_abs_relative_error"],
                                        "max": summary["max_abs_relative_error"]},
        "held_out": {k: v for k, v in summary.items()
                     if k not in ("median_abs_relative_error", "max_abs_relative_error")},
        "runs": [row_record(row, j) for row, j in zip(rows, jobs)],
    }


def row_record(row: Row, job: JobRun) -> dict:
    """One job as a profile records it: its policy, role, measurement, spread and prediction."""
    specs = {key: (spec, budget) for key, spec, budget in JOBS}
    c, run = row.checked, job.run
    return {"name": c.name, "policy": specs.get(c.name, (None,))[0],
            "budget_frac": specs.get(c.name, (None, None))[1],
            "role": row.role,
            "ppl": r6(run.ppl), "num_scored": run.num_scored,
            "measured_delta_ppl": round(c.measured_delta_ppl, 5),
            "spread": None if row.spread is None else [round(v, 5) for v in row.spread],
            "predicted_delta_ppl": round(c.predicted_delta_ppl, 5),
            "relative_error": None if math.isnan(c.relative_error)
            else round(c.relative_error, 4),
            "verdict": row.verdict,
            "placeholder_delta_ppl": round(c.placeholder_delta_ppl, 5),
            "attention_mix": {k: r6(v) for k, v in run.attention_mix.items()},
            "block_mix": {k: r6(v) for k, v in run.block_mix.items()}}


def stored_jobs(data: dict) -> tuple[list[JobRun], dict[str, tuple[float, float]]]:
    """The runs a profile records (``profile``'s ``runs``) and their spreads, for a refit."""
    jobs, spreads = [], {}
    for r in data.get("runs") or []:
        jobs.append(JobRun(QualityRun(r["name"], r["ppl"], r["num_scored"], r["attention_mix"],
                                      r["block_mix"]), None))
        if r.get("spread"):
            spreads[r["name"]] = tuple(r["spread"])
    if not any(j.run.name == "fp16" for j in jobs):
        raise UserError("holds no fp16 run to refit from", field="--from")
    return jobs, spreads
