"""The validation table: ``infer-os validate`` on the bundled ``validation-*`` scenarios (torch
backend by default, calibrated cost model), one row per scenario variant, then the median and the
worst |signed relative error| of each metric over all of them.

    python benchmarks/validation.py [--backend torch|ort] [--profile PROFILE.yaml]
        [--scenario NAME]... [--json-dir DIR]
    python benchmarks/validation.py --from-json DIR   # tabulate saved `validate --json` output
    python benchmarks/validation.py --pool-steps DIR  # the shadow pooled over every steps.*.csv
                                                      # under DIR (`validate --out` writes them)
    python benchmarks/validation.py --moves DIR       # every step that moves blocks, one a line

Without ``--profile`` the cached calibration of this machine is used (made first if missing,
about 2 minutes).  Run it alone on the machine: other processes disturb the measured runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

METRICS = ("throughput_tok_s", "ttft_s.p50", "tpot_s.p50", "e2e_s.p50", "kv_peak_bytes")
SCENARIOS = ("validation-short", "validation-long", "validation-batched", "validation-spec")


def run_validate(scenario: str, profile: str | None, backend: str = "torch") -> dict:
    from sim.cli import main

    argv = ["validate", scenario, "--backend", backend, "--json"]
    if profile:
        argv += ["--profile", profile]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    if code != 0:
        sys.exit(f"validate {scenario} exited {code}")
    return json.loads(buf.getvalue())


def table(docs: list[dict]) -> str:
    head = ("| scenario | variant | " + " | ".join(METRICS)
            + " | machine speed | acceptance (given / measured) |")
    lines = [head, "|" + "---|" * (len(METRICS) + 4)]
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    for doc in docs:
        for run in doc["runs"]:
            cells = []
            for m in METRICS:
                e = run["relative_error"].get(m)
                if e is not None:
                    errors[m].append(abs(e))
                cells.append("-" if e is None else f"{e:+.1%}")
            given = run.get("conditioned_on", {})
            alpha = given.get("speculation.alpha")
            ma = run["measured"].get("spec_acceptance_rate")
            acc = f"{alpha:.2f} / {ma:.2f}" if alpha is not None and ma is not None else "-"
            speed = given.get("machine_speed")
            lines.append(f"| {doc['scenario']} | {run['variant']} | " + " | ".join(cells)
                         + f" | {'-' if speed is None else format(speed, '.2f')} | {acc} |")
    med = [f"{statistics.median(v):.1%}" if v else "-" for v in errors.values()]
    worst = [f"{max(v):.1%}" if v else "-" for v in errors.values()]
    lines.append("| **median \\|error\\|** | | " + " | ".join(med) + " | | |")
    lines.append("| **worst \\|error\\|** | | " + " | ".join(worst) + " | | |")
    return "\n".join(lines)


def pooled_steps(folder: Path) -> str:
    """The shadow (``sim.run.shadow.summarize``) over every measured step of every
    ``steps.*.csv`` under ``folder``, as a table."""
    from sim.report.steps import read_steps
    from sim.run.shadow import summarize

    files = sorted(folder.rglob("steps.*.csv"))
    if not files:
        sys.exit(f"{folder}: no steps.*.csv under it (validate --out DIR writes them)")
    rows = [{**r, "variant": str(p)} for p in files for r in read_steps(p)]
    lines = [f"{len(files)} files, {len(rows)} steps", "",
             "| step kind | steps | median \\|error\\| | median signed error | p10 .. p90 "
             "| noise floor | model on those steps | steps with twins |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, e in summarize(rows).items():
        floor = (f"{e['floor']:.1%} | {e['floor_abs']:.1%} | {e['floor_steps']:,}"
                 if "floor" in e else "- | - | 0")
        lines.append(f"| {kind} | {e['steps']:,} | {e['median_abs']:.1%} | {e['median']:+.1%} "
                     f"| {e['p10']:+.1%} .. {e['p90']:+.1%} | {floor} |")
    return "\n".join(lines)


def moves(folder: Path) -> str:
    """Every measured step of every ``steps.*.csv`` under ``folder`` that moves KV blocks (its
    predicted re-tiering work is not zero), with the work its plan charges and the retier
    segment predicted against measured, as a table."""
    import csv

    lines = ["| scenario: variant | step | rows | host copy MB | re-quantized M values "
             "| shifted MB | recomputed tokens | predicted ms | measured ms | error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(folder.rglob("steps.*.csv")):
        name = f"{path.parent.name}: {path.name[len('steps.'):-len('.csv')]}"
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if not float(r.get("predicted_retier_work_s") or 0):
                    continue
                p, m = float(r["predicted_retier_s"]), float(r["measured_retier_s"])
                lines.append(
                    f"| {name} | {r['step']} | {r['batch']} | {int(r['kv_copy_bytes']) / 1e6:.1f} "
                    f"| {int(r['kv_requant_values']) / 1e6:.2f} "
                    f"| {int(r['kv_shift_bytes']) / 1e6:.1f} | {r['kv_recompute_tokens']} "
                    f"| {p * 1e3:.2f} | {m * 1e3:.2f} | {p / m - 1:+.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="torch", help="torch (default) or ort")
    ap.add_argument("--profile", help="calibration profile (default: this machine's cached one)")
    ap.add_argument("--scenario", action="append", help="scenario (repeatable; default: the "
                    "bundled validation-* ones)")
    ap.add_argument("--json-dir", help="also save each scenario's validate JSON here")
    ap.add_argument("--from-json", help="tabulate the *.json files of this folder instead")
    ap.add_argument("--pool-steps", metavar="DIR", help="the shadow pooled over every "
                    "steps.*.csv under DIR, per step kind, instead")
    ap.add_argument("--moves", metavar="DIR", help="every step under DIR that moves blocks "
                    "(its plan's work, the retier segment predicted and measured), instead")
    args = ap.parse_args()
    if args.moves:
        print(moves(Path(args.moves)))
        return
    if args.pool_steps:
        print(pooled_steps(Path(args.pool_steps)))
        return
    if args.from_json:
        docs = [json.loads(p.read_text()) for p in sorted(Path(args.from_json).glob("*.json"))]
    else:
        docs = []
        for scenario in args.scenario or SCENARIOS:
            t0 = time.perf_counter()
            docs.append(run_validate(scenario, args.profile, args.backend))
            print(f"{scenario}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            if args.json_dir:
                out = Path(args.json_dir)
                out.mkdir(parents=True, exist_ok=True)
                name = Path(scenario).stem
                (out / f"{name}.json").write_text(json.dumps(docs[-1], indent=2))
    print(table(docs))


if __name__ == "__main__":
    main()
