"""ONNX Runtime with IOBinding under each buffer policy, beside plain ``session.run`` and the torch
adapter, on the same scenario (default: ``smollm2-cpu``'s baseline, SmolLM2-135M, FP16 KV).

Per run: decode throughput (output tokens / measured step seconds, the engine's
``throughput_tok_s``), the buffer policy's counters (allocations, bytes allocated, reuses, memory
efficiency = bytes used / bytes reserved, summed over requests) and, for ``ort`` with binding,
the real host allocations behind them and the seconds they took (first touch of their pages
included).  The first ``ort`` run exports the model (cached after).

    python benchmarks/ort_buffers.py [--scenario smollm2-cpu] [--variant baseline]
        [--policies exact,pow2,preallocate,adaptive] [--set k=v]...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scenarios import locate
from sim.config.scenario import resolve_runs
from sim.run.runner import run_scenario


def _run(path: Path, variant: str, backend: str, sets: list[str]) -> dict:
    [scn] = [s for v, s in resolve_runs(path, sets) if v == variant]
    out = run_scenario(scn, variant, None, path.parent, backend=backend)
    m, ex = out.metrics, out.executor
    arrays = getattr(ex, "arrays", None)
    return {"tok_s": m["throughput_tok_s"], "steps_s": m["measured"]["steps_s"],
            **m["buffers"], "real_allocs": arrays.num_allocs if arrays else None,
            "alloc_ms": 1e3 * arrays.alloc_s if arrays else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="smollm2-cpu")
    ap.add_argument("--variant", default="baseline")
    ap.add_argument("--policies", default="exact,pow2,preallocate,adaptive")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    path = locate(args.scenario) if not Path(args.scenario).exists() else Path(args.scenario)
    rows = [("torch", "adaptive", _run(path, args.variant, "torch", args.sets)),
            ("ort session.run", "-", _run(path, args.variant, "ort",
                                          [*args.sets, "backend.ort_binding=false"]))]
    for policy in args.policies.split(","):
        sets = [*args.sets, f"policies.buffers={{kind: {policy}}}"]
        rows.append(("ort binding", policy, _run(path, args.variant, "ort", sets)))
    print(f"{'backend':16} {'policy':12} {'tok/s':>7} {'allocs':>6} {'real':>5} "
          f"{'alloc ms':>8} {'alloc MB':>9} {'reuses':>6} {'efficiency':>10}")
    for backend, policy, r in rows:
        ms = f"{r['alloc_ms']:.1f}" if r["alloc_ms"] is not None else "-"
        print(f"{backend:16} {policy:12} {r['tok_s']:7.1f} {r['num_allocs']:6d} "
              f"{r['real_allocs'] if r['real_allocs'] is not None else '-':>5} {ms:>8} "
              f"{r['alloc_bytes'] / 1e6:9.2f} {r['num_reuses']:6d} {r['efficiency_frac']:10.3f}")


if __name__ == "__main__":
    main()
