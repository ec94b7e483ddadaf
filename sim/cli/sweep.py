"""``infer-os sweep SWEEP.yaml [--executor local|dask[=ADDRESS]] [--out DIR]``: the subcommand,
its progress bar (stderr, with an ETA) and its summary (``--json``: one object on stdout)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import scenarios
from sim.errors import UserError
from sim.sweep.interrupt import Interrupted, on_signals
from sim.sweep.run import MAX_WORKERS, ExecutorSpec, SweepRun, run_sweep
from sim.sweep.spec import load_sweep

SWEEP_DIR = Path(scenarios.__file__).parent / "sweeps"
MAX_LOST_SHOWN = 5  # points lost to the executor, listed on stderr


def sweep_names() -> list[str]:
    return sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))


def locate(name_or_path: str) -> Path:
    bundled = SWEEP_DIR / f"{name_or_path}.yaml"
    if bundled.exists():
        return bundled
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise UserError(f"unknown sweep {name_or_path!r} (bundled: {', '.join(sweep_names())}; or a "
                    "path to a sweep YAML file)", field="SWEEP")


class _Bar:
    """Points done of the points to run, with elapsed time and ETA, on stderr."""

    def __init__(self, total_points: int):
        self.num_failed = 0
        self.bar = Progress(TextColumn("sweeping{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("", total=total_points)
        self.bar.start()

    def __call__(self, record: dict) -> None:
        self.num_failed += record["status"] != "ok"
        failed = f" ({self.num_failed} failed)" if self.num_failed else ""
        self.bar.update(self.task, advance=1, description=failed)

    def warn(self, text: str) -> None:
        self.bar.console.print(f"infer-os: warning: {text}", markup=False, highlight=False,
                               soft_wrap=True)

    def close(self) -> None:
        self.bar.stop()


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = ExecutorSpec.parse(args.executor, args.workers)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    with on_signals():  # SIGINT/SIGTERM: stop the workers, write the results, exit 130/143
        try:
            sweep = load_sweep(locate(args.sweep))  # every point checked before anything runs
            out_dir = Path(args.out or f"sweeps/{sweep.spec.name}")
            err.print(f"sweep {sweep.spec.name}: {len(sweep.points)} points on "
                      f"{spec.describe()} -> {out_dir}", markup=False)
            bar = _Bar(len(sweep.points))
            try:
                result = run_sweep(sweep, out_dir, spec, on_point=bar, on_warning=bar.warn)
            finally:
                bar.close()
        except Interrupted as stop:  # before the first point was sent
            err.print(f"infer-os: interrupted ({stop}) before any point ran", markup=False)
            return stop.exit_code
    if result.interrupted:
        err.print(f"infer-os: interrupted: {result.num_done} of {result.num_points} points done; "
                  "rerun to resume", markup=False)
        return 128 + result.interrupted
    return _summary(args, result, out_dir, err)


def _summary(args: argparse.Namespace, result: SweepRun, out_dir: Path, err: Console) -> int:
    summary = result.summary()
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        print(f"{result.sweep}: {result.num_points} points ({result.num_skipped} already done, "
              f"{result.num_run} run in {result.wall_s:.1f} s; {result.num_ok} ok, "
              f"{result.num_failed} failed) on {result.executor}\n"
              f"results: {', '.join(str(out_dir / f) for f in result.files)}\n"
              f"report:  infer-os report {out_dir}")
    for line in result.lost[:MAX_LOST_SHOWN]:
        err.print(f"lost (rerun to retry): {line}", markup=False)
    if len(result.lost) > MAX_LOST_SHOWN:
        err.print(f"... and {len(result.lost) - MAX_LOST_SHOWN} more lost points", markup=False)
    return 1 if result.lost else 0


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="run a sweep of scenario points on a process pool or Dask")
    p.add_argument("sweep", metavar="SWEEP", help="a bundled sweep name or a path to a YAML file")
    p.add_argument("--executor", default="local", metavar="local|dask[=ADDRESS]",
                   help="local process pool (default), a Dask LocalCluster (dask) or the Dask "
                        "scheduler at ADDRESS (dask=tcp://host:8786)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes of the local pool or the LocalCluster, 1 to "
                        f"{MAX_WORKERS} (default: all cores)")
    p.add_argument("--out", metavar="DIR",
                   help="results folder (default sweeps/NAME); a rerun resumes it")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(func=cmd_sweep)
    return p
