"""``infer-os validate``: simulate and measure every variant on identical requests; the errors.

``--repeats N`` measures each variant N times, interleaved across variants (variant a, b, c, then
a, b, c again: a slow minute of the machine hits every variant alike), and predicts it once.  For
every compared metric the table then gives the measured median and spread (min to max over the
repeats); the error is against the median, and a row is flagged ``noise`` when the prediction
falls within the measured spread, ``model`` when outside it.  The per-request comparison, the
engine state, the schedule replay (``sim.run.replay``) and the ``--out`` files other than the
steps files are those of the first repeat; the shadow (its summary and ``steps.{variant}.csv``)
and conditioning (acceptance, machine speed) pool every repeat.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console

from sim.cli.interrupts import STOPPED
from sim.costs.calibrated import load_calibration
from sim.engine.executor import ExecutorReport
from sim.errors import UserError
from sim.run import output
from sim.run.backends import load_backend, load_calibrator
from sim.run.metrics import metric_value
from sim.run.replay import schedule_fixed
from sim.run.runner import calibrated_model, run_scenario
from sim.run.shadow import pooled_rows, shadow_of, write_shadow_csvs
from sim.run.validate import (
    COMPARED,
    acceptance_replay,
    compare,
    conditioned_on,
    relative_error,
)

MAX_REPEATS = 20


def cmd_validate(args: argparse.Namespace, cli) -> int:
    """``cli``: the app module's helpers (``resolve``, ``prepare_out``, ``progress``,
    ``interrupted``, ``discard``)."""
    if args.trace is not None:  # served traffic, recorded by `infer-os serve --record`
        from sim.cli.trace_validate import validate_trace

        return validate_trace(args)
    if args.scenario is None or args.backend is None:
        raise UserError("needs SCENARIO and --backend (or --trace DIR)",
                        field="SCENARIO" if args.scenario is None else "--backend")
    if not 1 <= args.repeats <= MAX_REPEATS:
        raise UserError(f"must be 1 to {MAX_REPEATS}", field="--repeats")
    backend = args.backend
    if backend == "sim":
        raise UserError("validate compares the simulator with a real backend",
                        field="--backend")
    load_backend(backend)
    path, name, runs_cfg, setups = cli.resolve(args)
    out_dir = cli.prepare_out(args, "validation.json")
    n = args.repeats
    progress = cli.progress((n + 1) * sum(s.workload.num_requests for _, s in runs_cfg),
                            f"validating ({backend})")
    cost_model = args.cost_model or "calibrated"
    given = load_calibration(Path(args.profile)) if args.profile else None
    profiles, speeds = {}, {v: [] for v, _ in runs_cfg}
    measured: dict[str, list] = {v: [] for v, _ in runs_cfg}
    out, run_outputs, sinks = [], [], []
    steps_rows: dict[str, list[dict]] = {}

    def finish(variant: str, scn) -> None:
        """Predict ``variant`` once its last repeat was measured; compare."""
        runs = measured[variant]
        first = runs[0]
        given_scn, conditioned = conditioned_on(scn, _pooled(runs))
        profile = profiles.get(variant)
        if speeds[variant]:  # the machine's speed around every measured run
            speed = float(np.mean(speeds[variant]))
            profile = profile.model_copy(update={"speed_factor": speed})
            conditioned["machine_speed"] = float(f"{speed:.4g}")
        replay = acceptance_replay(first) if conditioned else None
        if replay:
            conditioned["acceptance_replay"] = "measured accepted counts per request"
        sinks.append(cli.trace_sink(out_dir, variant, cost_model))
        predicted = run_scenario(given_scn, variant, cost_model, path.parent,
                                 record_trace=sinks[-1], on_done=progress,
                                 calibration=profile, acceptance_replay=replay,
                                 setup=replace(setups[variant], scenario=given_scn))
        errors = [f"{side}: {r.error}" for side, r in (("measured", first),
                                                        ("predicted", predicted))
                  if r.error]
        shadow = shadow_of(runs, None if profile is None else calibrated_model(
            replace(setups[variant], scenario=given_scn), profile))
        steps_rows[variant] = pooled_rows(runs)
        entry = {"variant": variant, "cost_model": cost_model,
                 **compare(predicted, first), "conditioned_on": conditioned}
        if first.shadow_rows:  # the same errors with the measured schedule held fixed
            entry["schedule_fixed"] = schedule_fixed(first, first.shadow_rows,
                                                     entry["relative_error"])
        if n > 1:
            entry |= noise(predicted.metrics, [r.metrics for r in runs])
        out.append(entry | ({"shadow": shadow} if shadow else {})
                   | ({"calibration": profile.machine} if profile is not None else {})
                   | ({"error": "; ".join(errors)} if errors else {}))
        run_outputs.extend([predicted, first])

    try:
        try:
            if cost_model == "calibrated":
                calibrator = load_calibrator(backend)
                progress.close()  # a calibration draws its own progress bar
                for variant, scn in runs_cfg:
                    profiles[variant] = given or calibrator.for_scenario(scn, path.parent)[0]
            for repeat in range(n):  # interleaved: every variant once per repeat
                for variant, scn in runs_cfg:
                    profile = profiles.get(variant)
                    check = args.speed_check and profile is not None
                    if check:
                        speeds[variant].append(calibrator.speed_check(profile, scn,
                                                                      path.parent))
                    sink = cli.trace_sink(out_dir, variant, None) if repeat == 0 else False
                    sinks.append(sink)
                    measured[variant].append(run_scenario(
                        scn, variant, None, path.parent, record_trace=sink, on_done=progress,
                        backend=backend, setup=setups[variant],
                        shadow=profile is not None))
                    if check:
                        speeds[variant].append(calibrator.speed_check(profile, scn,
                                                                      path.parent))
                    if repeat == n - 1:  # (a variant done is kept if interrupted later)
                        finish(variant, scn)
        except STOPPED as stop:
            progress.close()
            doc = output.incomplete({"scenario": name, "backend": backend, "runs": out},
                                    len(run_outputs), 2 * len(runs_cfg))
            return cli.interrupted(stop, out_dir, doc, run_outputs, "validation.json")
        finally:
            progress.close()
        doc = {"scenario": name, "backend": backend, "repeats": n, "runs": out}
        if args.json:
            sys.stdout.write(output.dumps(doc) + "\n")
        else:
            output.print_validation(doc, Console(width=None if sys.stdout.isatty() else 150))
        if out_dir is not None:  # both sides' files, for `report`
            write_shadow_csvs(out_dir, steps_rows)
            output.write_out(out_dir, doc, run_outputs, "validation.json")
    finally:
        cli.discard(sinks)
    return output.report_failures(run_outputs, Console(stderr=True, highlight=False,
                                                       soft_wrap=True))


def _pooled(runs: list):
    """The first run, with the speculation counters of every repeat summed (what conditioning
    reads)."""
    reports = [r.report for r in runs if r.report is not None]
    if len(reports) < 2:
        return runs[0]
    pooled = ExecutorReport(reports[0].device_label, sum(r.steps_s for r in reports),
                            sum(r.draft_accepted for r in reports),
                            sum(r.draft_rejections for r in reports),
                            sum(r.draft_empty for r in reports), reports[0].accepted_log,
                            reports[0].proposed_log)
    return replace(runs[0], report=pooled)


def noise(predicted: dict, measured: list[dict]) -> dict:
    """``relative_error`` against the measured median of each metric, and ``repeats``: the
    median, min and max over the repeats and, per metric, ``noise`` (the prediction is within
    the measured spread) or ``model`` (outside it); ``decode_steps``, predicted and per repeat
    in order (a speculating variant whose repeats drafted differently shows here, in fewer steps
    for more drafting, and in the ``repeat`` column of its steps file)."""
    stats: dict[str, dict] = {"median": {}, "min": {}, "max": {}, "verdict": {}}
    errors = {}
    for name in COMPARED:
        values = [metric_value(m, name) for m in measured]
        values = [v for v in values if v is not None]
        p = metric_value(predicted, name)
        if not values:
            errors[name] = None
            continue
        med, lo, hi = float(np.median(values)), min(values), max(values)
        stats["median"][name], stats["min"][name], stats["max"][name] = \
            _g(med), _g(lo), _g(hi)
        errors[name] = relative_error(p, med)
        if p is not None:
            stats["verdict"][name] = "noise" if lo <= p <= hi else "model"
    stats["decode_steps"] = {"predicted": _decode_steps(predicted),
                             "measured": [_decode_steps(m) for m in measured]}
    return {"relative_error": errors, "repeats": {"n": len(measured), **stats}}


def _decode_steps(metrics: dict) -> int | None:
    return metrics.get("engine", {}).get("num_decode_steps")


def _g(x: float) -> float:
    return float(f"{float(x):.12g}")
