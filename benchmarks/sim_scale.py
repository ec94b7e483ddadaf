"""How fast is the simulator?  Runs the bundled ``sim-scale`` scenario at 1x, 2x and 4x its
requests (same arrival rate, so the simulated time grows with the work) and reports simulated
output tokens per wall-clock second and wall time; linear scaling means the wall-time ratios track
the work ratios.  Target: >= 1,000,000 simulated output tokens per wall second on 2 cores, end
to end (``--end-to-end``: the ``infer-os simulate`` command, start-up included).

    python benchmarks/sim_scale.py [--scales 1,2,4] [--repeats 1] [--end-to-end]
                                   [--against DIR]

``--against DIR``: also run another checkout of the project (e.g. ``git worktree add DIR HEAD``)
end to end, alternating with this one within each repeat, and print both medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(scale: int) -> tuple[float, int, int]:
    """In-process: the run alone (the modules already imported)."""
    import scenarios
    from sim.config.scenario import resolve_runs
    from sim.run.runner import run_scenario

    path = scenarios.locate("sim-scale")
    (variant, scn), = resolve_runs(path, [f"workload.num_requests={10_000 * scale}"])
    t0 = time.perf_counter()
    out = run_scenario(scn, variant, "roofline", Path(path).parent)
    wall = time.perf_counter() - t0
    return wall, out.metrics["output_tokens"], out.metrics["num_completed"]


def end_to_end(scale: int, tree: Path = ROOT) -> tuple[float, int, int]:
    """``python -m sim.cli simulate sim-scale --json`` of the checkout ``tree`` in a fresh
    process: start-up, scenario loading and output included."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "sim.cli", "simulate", "sim-scale", "--json",
           "--set", f"workload.num_requests={10_000 * scale}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    metrics = json.loads(out.stdout)["runs"][0]["metrics"]
    return wall, metrics["output_tokens"], metrics["num_completed"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--end-to-end", action="store_true",
                    help="time the infer-os simulate command in a fresh process")
    ap.add_argument("--against", metavar="DIR", type=Path,
                    help="another checkout, run end to end alternating with this one")
    args = ap.parse_args()
    scales = [int(s) for s in args.scales.split(",")]
    if args.against:
        return compare(scales, args.repeats, args.against.resolve())
    run = end_to_end if args.end_to_end else one_run
    rows = []
    for scale in scales:
        walls = []
        for _ in range(args.repeats):
            wall, tokens, done = run(scale)
            walls.append(wall)
        wall = statistics.median(walls)
        rows.append((scale, done, tokens, wall))
    base_wall, base_tokens = rows[0][3], rows[0][2]
    print("| scale | requests completed | output tokens | wall s (median) | sim tok / wall s "
          "| wall ratio | work ratio |")
    print("|---|---|---|---|---|---|---|")
    for scale, done, tokens, wall in rows:
        print(f"| {scale}x | {done} | {tokens} | {wall:.2f} | {tokens / wall:,.0f} "
              f"| {wall / base_wall:.2f} | {tokens / base_tokens:.2f} |")


def compare(scales: list[int], repeats: int, other: Path) -> None:
    """End to end, this checkout and ``other`` alternating (which goes first alternates too)."""
    print(f"| scale | output tokens | {other.name} wall s (median) | {other.name} sim tok / s "
          "| this wall s (median) | this sim tok / s | speed-up | runs (other; this) |")
    print("|---|---|---|---|---|---|---|---|")
    for scale in scales:
        walls: dict[Path, list[float]] = {other: [], ROOT: []}
        tokens = {}
        for rep in range(repeats):
            for tree in (other, ROOT) if rep % 2 == 0 else (ROOT, other):
                wall, tokens[tree], _ = end_to_end(scale, tree)
                walls[tree].append(wall)
                print(f"  {scale}x repeat {rep + 1} {tree}: {wall:.2f} s", file=sys.stderr)
        old, new = statistics.median(walls[other]), statistics.median(walls[ROOT])
        same = "" if tokens[other] == tokens[ROOT] else " (output tokens DIFFER)"
        runs = (", ".join(f"{w:.2f}" for w in walls[other]) + "; "
                + ", ".join(f"{w:.2f}" for w in walls[ROOT]))
        print(f"| {scale}x | {tokens[ROOT]}{same} | {old:.2f} | {tokens[other] / old:,.0f} "
              f"| {new:.2f} | {tokens[ROOT] / new:,.0f} | {old / new:.2f}x | {runs} |")


if __name__ == "__main__":
    main()
