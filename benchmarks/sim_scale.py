"""How fast is the simulator?  Runs the bundled ``sim-scale`` scenario at 1x, 2x and 4x its
requests (same arrival rate, so the simulated time grows with the work) and reports simulated
output tokens per wall-clock second and wall time; linear scaling means the wall-time ratios track
the work ratios.  Target: >= 200,000 simulated output tokens per wall second on 2 cores.

    python benchmarks/sim_scale.py [--scales 1,2,4] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import scenarios
from sim.config.scenario import resolve_runs
from sim.run.runner import run_scenario


def one_run(scale: int) -> tuple[float, int, int]:
    path = scenarios.locate("sim-scale")
    (variant, scn), = resolve_runs(path, [f"workload.num_requests={10_000 * scale}"])
    t0 = time.perf_counter()
    out = run_scenario(scn, variant, "roofline", Path(path).parent)
    wall = time.perf_counter() - t0
    return wall, out.metrics["output_tokens"], out.metrics["num_completed"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for scale in (int(s) for s in args.scales.split(",")):
        walls = []
        for _ in range(args.repeats):
            wall, tokens, done = one_run(scale)
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


if __name__ == "__main__":
    main()
