"""Perplexity of SmolLM2-135M-Instruct on held-out Shakespeare with a 2k-token context, for every
tiering policy, measured through the real paged KV store (adapters.decoding.perplexity).

    python benchmarks/perplexity_tiering.py [--windows 2] [--play the-tempest] [--budget-frac 1.0]
        [--progressive-budgets 1.25,1.5,2.0] [--only-progressive]

Prints a markdown table: PPL, delta-PPL and quality = 100 x PPL_fp16 / PPL_policy, KV memory saved
at the end of the window, and the moves each policy made.  Deterministic (no timing involved).
The device budget (reserved up front for the whole window, as the engine does) is what drives
``progressive``: its rules fire on memory pressure, so it is also run at other budgets (below
1 x the window cannot be admitted with FP16 new blocks, as in the engine).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from adapters.decoding.perplexity import tiered_nll  # noqa: E402
from adapters.decoding.quality_check import text_windows  # noqa: E402
from adapters.model.loading import load_model  # noqa: E402
from adapters.model.text import play_text  # noqa: E402
from sim.config.policy_registry import build as build_policy  # noqa: E402

POLICIES = [
    ("fp16", {"kind": "fp16"}),
    ("uniform int8", {"kind": "uniform", "precision": "int8"}),
    ("uniform int4", {"kind": "uniform", "precision": "int4"}),
    ("uniform int2", {"kind": "uniform", "precision": "int2"}),
    ("kivi (int2, 128 FP16 residual)", {"kind": "kivi"}),
    ("mikv (heavy int8 / rest int4)", {"kind": "mikv"}),
    ("h2o (20 % heavy + 256 recent)", {"kind": "h2o"}),
    ("streaming (4 sinks + 1024 window)", {"kind": "streaming"}),
    ("progressive (the paper's A.1), budget 1 x FP16", {"kind": "progressive"}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--play", default="the-tempest")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--budget-frac", type=float, default=1.0)
    ap.add_argument("--only-progressive", action="store_true",
                    help="fp16 and the progressive budget rows only")
    ap.add_argument("--progressive-budgets", default="1.25,1.5,2.0",
                    help="extra progressive rows at these device budgets (x FP16 window)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: a shared machine oversubscribed by 2+ threads per "
                         "process runs 10-20x slower)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m", dtype="float32", device="cpu")
    ids = loaded.tokenizer.encode(play_text(args.play))
    windows = text_windows(ids, args.windows, args.context)
    print(f"SmolLM2-135M fp32 on cpu, {args.play}: {len(ids)} tokens, {args.windows} windows of "
          f"{args.context}, scored from token 512, chunks of 128, KV blocks of 64 tokens, "
          f"INT groups of 64, FP tier FP16, device budget {args.budget_frac} x FP16 window",
          file=sys.stderr)
    rows = []
    base = None
    jobs = [(name, spec, args.budget_frac) for name, spec in POLICIES
            if not args.only_progressive or spec["kind"] == "fp16"]
    jobs += [(f"progressive, budget {float(b):g} x FP16", {"kind": "progressive"}, float(b))
             for b in args.progressive_budgets.split(",") if b]
    for name, spec, budget in jobs:
        policy = build_policy("tiering", spec)
        t0 = time.perf_counter()
        runs = [tiered_nll(loaded.model, w, policy, budget_frac=budget) for w in windows]
        nll = sum(r.nll_sum for r in runs)
        n = sum(r.num_scored for r in runs)
        ppl = math.exp(nll / n)
        saved = sum(r.kv_saved_frac for r in runs) / len(runs)
        moves = {}
        for r in runs:
            for k, v in r.moves.items():
                moves[k] = moves.get(k, 0) + v
        base = base or ppl
        rows.append((name, ppl, ppl - base, 100 * base / ppl, saved, moves))
        print(f"  {name}: PPL {ppl:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print("| tiering policy | PPL | delta-PPL | quality % | KV saved | moves |")
    print("|---|---|---|---|---|---|")
    for name, ppl, delta, quality, saved, moves in rows:
        mv = ", ".join(f"{k} {v}" for k, v in sorted(moves.items())) or "-"
        print(f"| {name} | {ppl:.3f} | {delta:+.3f} | {quality:.1f} | {saved:.1%} | {mv} |")


if __name__ == "__main__":
    main()
