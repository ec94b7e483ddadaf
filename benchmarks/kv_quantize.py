"""What quantizing KV blocks costs in the torch executor's store (``adapters.kv.paged.PagedKV``),
SmolLM2-135M's shape (30 layers, 3 KV heads of 64, blocks of 64 tokens, FP16 arena).

Two moves, as a measured run makes them:

- **prompt**: a prompt of C tokens admitted below FP16, every full block quantized after the
  prefill (what ``TorchExecutor._apply_tiers`` does in a prefill step);
- **fill**: a block that fills during decode, quantized right away, in a request that holds
  C tokens at that precision in the end (its last 16 blocks, or half of them, filled by
  appended tokens one block at a time and each quantized then; median and mean).

``--api new`` makes them through ``PagedKV.set_precisions`` (the executor's call since the
one-pass change); ``--api old`` through ``set_precision`` block by block (the only call before it).
``--against DIR`` also runs the old-API cases in another checkout (``git worktree add DIR
COMMIT``), alternating with this tree's in each repeat, so the two are timed side by side.  The
floor is quantizing one block alone (``adapters.kv.segments.quantize_blocks`` in this tree).
Reported: ms per block, medians over repeats.

    python benchmarks/kv_quantize.py [--contexts 512,2048,4096] [--precisions int8,int4]
        [--repeats 5] [--against DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

L, K, D, BT = 30, 3, 64, 64


@torch.inference_mode()
def store(tokens: int):
    from adapters.kv.paged import PagedKV

    kv = PagedKV(num_layers=L, num_kv_heads=K, head_dim=D, block_tokens=BT, group=BT)
    kv.add(0, capacity_tokens=tokens + 64)
    kv.requests[0].arena[:, :, :, :tokens].normal_(generator=torch.Generator().manual_seed(0))
    kv.append(0, tokens)
    return kv


@torch.inference_mode()
def grow(kv, tokens: int) -> None:
    """``tokens`` more tokens of random K/V, as decode steps write them."""
    kv.reserve(0, tokens)
    used = kv.arena_tokens(0)
    kv.requests[0].arena[:, :, :, used:used + tokens].normal_()
    kv.append(0, tokens)


@torch.inference_mode()
def move(kv, blocks: list[int], prec, api: str) -> float:
    t0 = time.perf_counter()
    if api == "new":
        kv.set_precisions(0, blocks, [int(prec)] * len(blocks))
    else:
        for b in blocks:
            kv.set_precision(0, b, prec)
    return time.perf_counter() - t0


def cases(context: int, precision: str, api: str) -> dict[str, float]:
    """One repeat of every case -> ms per block."""
    from policies import Precision

    prec = Precision[precision.upper()]
    n = context // BT
    prompt = move(store(context + 10), list(range(n)), prec, api) / n
    last = min(16, n // 2)  # the fills timed: the last blocks, each once its tokens are in
    kv = store((n - last) * BT + 10)
    move(kv, list(range(n - last)), prec, api)
    fills = []
    for b in range(n - last, n):
        grow(kv, BT)
        fills.append(move(kv, [b], prec, api))
    return {"prompt": 1e3 * prompt, "fill median": 1e3 * statistics.median(fills),
            "fill mean": 1e3 * statistics.mean(fills)}


def floor(precision: str) -> float:
    from adapters.kv.segments import quantize_blocks

    bits = {"int8": 8, "int4": 4, "int2": 2}[precision]
    x = torch.randn(1, L, 2, K, BT, D, dtype=torch.float16)
    runs = []
    for _ in range(7):
        t0 = time.perf_counter()
        quantize_blocks(x, bits, BT)
        runs.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="512,2048,4096")
    ap.add_argument("--precisions", default="int8,int4")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--api", choices=("new", "old"), default=None)
    ap.add_argument("--against", default=None, help="another checkout: its old-API cases too")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", action="store_true", help="one repeat's figures (internal)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    contexts = [int(c) for c in a.contexts.split(",")]
    precs = a.precisions.split(",")
    if a.json:  # one repeat of one API, for a run in either tree
        print(json.dumps({f"{c}|{p}": cases(c, p, a.api) for c in contexts for p in precs}))
        return
    runs = {"new": a.api or "new", "old": "old"}
    if a.against:
        runs["against (old)"] = a.against
    got: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(a.repeats):
        for name, api in runs.items():
            cmd = [sys.executable, __file__, "--json", "--contexts", a.contexts,
                   "--precisions", a.precisions, "--threads", str(a.threads)]
            env = dict(os.environ)
            if name == "against (old)":
                cmd += ["--api", "old"]
                env["PYTHONPATH"] = a.against
            else:
                cmd += ["--api", api]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            got[name].append(json.loads(out.stdout))
    print(f"ms per block, median of {a.repeats} repeats ({a.threads} threads)\n")
    print("| context | precision | quantize alone | case | " + " | ".join(runs) + " |")
    print("|---|---|---|---|" + "---|" * len(runs))
    for c in contexts:
        for p in precs:
            q = floor(p)
            for case in ("prompt", "fill median", "fill mean"):
                cells = [statistics.median(r[f"{c}|{p}"][case] for r in got[name])
                         for name in runs]
                print(f"| {c} | {p.upper()} | {q:.2f} | {case} | "
                      + " | ".join(f"{v:.2f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
