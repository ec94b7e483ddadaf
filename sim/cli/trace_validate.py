"""``infer-os validate --trace DIR``: predict the traffic a server recorded and compare.

The scenario variant served (``serve.json``: path, variant, ``--set`` values) is rebuilt with its
workload replaced by the recording's ``trace.csv`` (``workload.arrival: {kind: trace}``) and
the server's ``max_waiting``; the simulator predicts it under the cost model (calibrated by
default, as ``validate``); the measured side is what the server recorded
(``sim.run.served.measured_run``).  The same error table as ``validate`` follows, and
``--json``/``--out`` write the same document.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from sim.config.scenario import TraceFile, resolve_runs
from sim.costs.calibrated import load_calibration
from sim.errors import UserError
from sim.run import output
from sim.run.backends import load_calibrator
from sim.run.runner import check_scenario, run_scenario
from sim.run.served import load_recording, measured_run
from sim.run.validate import compare, conditioned_on


def validate_trace(args: argparse.Namespace) -> int:
    if args.scenario is not None:
        raise UserError("give SCENARIO or --trace DIR, not both (the recording names its "
                        "scenario)", field="--trace")
    rec = load_recording(Path(args.trace))
    meta = rec.meta
    path = Path(meta["scenario"])
    if not path.is_file():
        raise UserError(f"the scenario it served, {path}, is not there any more",
                        file=str(rec.folder / "serve.json"), field="scenario")
    variant, scn = resolve_runs(path, list(meta.get("set") or []), [meta["variant"]])[0]
    workload = scn.workload.model_copy(update={
        "arrival": TraceFile(path=str(rec.trace_path.resolve())),
        "num_requests": len(rec.requests)})
    engine = scn.engine.model_copy(update={"max_waiting": meta.get("max_waiting")})
    scn = scn.model_copy(update={"workload": workload, "engine": engine})
    backend = args.backend or meta["backend"]
    setup = check_scenario(scn, path.parent, "sim")
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        output.prepare_out(out_dir, "validation.json")
    measured = measured_run(rec, variant)
    given_scn, conditioned = conditioned_on(scn, measured)
    cost_model = args.cost_model or "calibrated"
    profile = None
    if cost_model == "calibrated":
        profile = load_calibration(Path(args.profile)) if args.profile else \
            load_calibrator(backend).for_scenario(scn, path.parent)[0]
    predicted = run_scenario(given_scn, variant, cost_model, path.parent, calibration=profile,
                             setup=replace(setup, scenario=given_scn))
    run = {"variant": variant, "cost_model": cost_model, **compare(predicted, measured),
           "conditioned_on": conditioned} | (
        {"calibration": profile.machine} if profile is not None else {}) | (
        {"error": f"predicted: {predicted.error}"} if predicted.error else {})
    doc = {"scenario": scn.name, "backend": backend, "trace": str(rec.folder),
           "num_requests": len(rec.requests), "runs": [run]}
    if args.json:
        sys.stdout.write(output.dumps(doc) + "\n")
    else:
        output.print_validation(doc, Console(width=None if sys.stdout.isatty() else 150))
        Console(stderr=True, highlight=False).print(
            f"{len(rec.requests)} served requests from {rec.folder}; measured: the server's "
            "engine clock (wall-clock latencies are in its requests.csv)", markup=False)
    if out_dir is not None:
        output.write_out(out_dir, doc, [predicted, measured], "validation.json")
    return 1 if predicted.error else 0
