"""Wall time of a bundled sweep on the local process pool and on a Dask LocalCluster, side by side.

    python benchmarks/sweep_executors.py [--sweep tiering-grid-1000] [--workers 2] [--repeats 1]
                                         [--executors local,dask] [--against DIR]

Each repeat runs the whole sweep once per executor into a fresh folder (nothing resumed),
alternating which goes first; the Dask wall time includes starting the cluster.  Prints a
Markdown table (medians over repeats) and checks that both executors wrote identical tables.

``--against DIR``: instead, the local pool of this checkout and of another one (e.g. ``git
worktree add DIR HEAD``), each through ``infer-os sweep`` in a fresh process (wall time of the
whole command), alternating; checks that both wrote identical results tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sim.cli.sweep import locate
from sim.sweep.results import read_table
from sim.sweep.run import ExecutorSpec, run_sweep
from sim.sweep.spec import load_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="tiering-grid-1000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--executors", default="local,dask", help="comma-separated")
    parser.add_argument("--against", metavar="DIR", type=Path,
                        help="another checkout: its local pool against this one's")
    args = parser.parse_args(argv)
    if args.against:
        return against(args.sweep, args.workers, args.repeats, args.against.resolve())
    t0 = time.perf_counter()
    sweep = load_sweep(locate(args.sweep))
    load_s = time.perf_counter() - t0
    specs = {kind: ExecutorSpec(kind, num_workers=args.workers)
             for kind in args.executors.split(",")}
    walls: dict[str, list[float]] = {k: [] for k in specs}
    tables: dict[str, list[dict]] = {}
    for rep in range(args.repeats):
        order = list(specs) if rep % 2 == 0 else list(reversed(specs))
        for name in order:
            with tempfile.TemporaryDirectory() as tmp:
                result = run_sweep(sweep, Path(tmp), specs[name])
                tables[name] = read_table(Path(tmp))
            walls[name].append(result.wall_s)
            print(f"repeat {rep + 1} {name}: {result.num_run} points in {result.wall_s:.2f} s "
                  f"({result.num_ok} ok, {result.num_failed} failed, {len(result.lost)} lost)",
                  file=sys.stderr)
    n = len(sweep.points)
    base = statistics.median(walls["local"])
    print(f"sweep {args.sweep}: {n} points, loaded and checked in {load_s:.2f} s; "
          f"{args.workers} workers; medians of {args.repeats}\n")
    print("| executor | wall s (median) | points / s | wall ratio vs local | runs (s) |")
    print("|---|---|---|---|---|")
    for name, spec in specs.items():
        med = statistics.median(walls[name])
        runs = ", ".join(f"{w:.1f}" for w in walls[name])
        print(f"| {spec.describe()} | {med:.2f} | {n / med:.1f} | {med / base:.2f} | {runs} |")
    same = all(t == next(iter(tables.values())) for t in tables.values())
    print(f"\nidentical results tables: {'yes' if same else 'NO'}")
    return 0 if same else 1


ROOT = Path(__file__).resolve().parent.parent


def _sweep_command(tree: Path, name: str, workers: int, out: Path) -> tuple[float, dict]:
    """``infer-os sweep`` of the checkout ``tree`` in a fresh process: (wall s, its summary)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "sim.cli", "sweep", name, "--workers", str(workers),
           "--out", str(out), "--json"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, json.loads(done.stdout)


def against(name: str, workers: int, repeats: int, other: Path) -> int:
    """The local pool of ``other`` and of this checkout, alternating (module docstring)."""
    walls: dict[Path, list[float]] = {other: [], ROOT: []}
    tables = {}
    for rep in range(repeats):
        for tree in (other, ROOT) if rep % 2 == 0 else (ROOT, other):
            with tempfile.TemporaryDirectory() as tmp:
                wall, summary = _sweep_command(tree, name, workers, Path(tmp))
                tables[tree] = (Path(tmp) / "results.csv").read_bytes()
            walls[tree].append(wall)
            print(f"repeat {rep + 1} {tree}: {summary['num_run']} points in {wall:.2f} s "
                  f"({summary['num_ok']} ok)", file=sys.stderr)
    old, new = statistics.median(walls[other]), statistics.median(walls[ROOT])
    print(f"sweep {name}: local process pool ({workers} processes), `infer-os sweep` wall "
          f"time (start-up included), medians of {repeats}\n")
    print("| checkout | wall s (median) | runs (s) |")
    print("|---|---|---|")
    for tree, label in ((other, f"{other} (other)"), (ROOT, f"{ROOT} (this)")):
        runs = ", ".join(f"{w:.1f}" for w in walls[tree])
        print(f"| {label} | {statistics.median(walls[tree]):.2f} | {runs} |")
    same = tables[other] == tables[ROOT]
    print(f"\nspeed-up: {old / new:.2f}x; identical results.csv: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
