"""Wall time of a bundled sweep on the local process pool and on a Dask LocalCluster, side by side.

    python benchmarks/sweep_executors.py [--sweep tiering-grid-1000] [--workers 2] [--repeats 1]

Each repeat runs the whole sweep once per executor into a fresh folder (nothing resumed),
alternating which goes first; the Dask wall time includes starting the cluster.  Prints a
Markdown table (medians over repeats) and checks that both executors wrote identical tables.
"""

from __future__ import annotations

import argparse
import statistics
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
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    sweep = load_sweep(locate(args.sweep))
    load_s = time.perf_counter() - t0
    specs = {"local": ExecutorSpec("local", num_workers=args.workers),
             "dask": ExecutorSpec("dask", num_workers=args.workers)}
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
    same = tables["local"] == tables["dask"]
    print(f"\nidentical results tables: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
