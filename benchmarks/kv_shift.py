"""What shifting the torch store's FP16 arena costs (``adapters.kv.tier_moves.shift``: what an
eviction or an FP16 block leaving for a lower tier makes the tokens after it do), in place, in
chunks no longer than the gap, against the copy through a fresh clone the store made before
(``arena[..., d:d+n] = arena[..., s:e].clone()``).  SmolLM2-135M's shape (30 layers, 3 KV heads
of 64, FP16), one block's gap (64 tokens), shifts of 74-700 tokens; before each, a 64 MB buffer
is written, as a forward streams the weights, so the arena is cold as in a measured step.  The
two alternate, each first in every other round.  Reported: GB/s shifted, median and quartiles.

    python benchmarks/kv_shift.py [--rounds 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

L, K, D, BT = 30, 3, 64, 64
SIZES = (74, 150, 300, 458, 700)  # tokens shifted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from adapters.kv.tier_moves import shift

    torch.set_num_threads(args.threads)
    arena = torch.randn(L, 2, K, 2048, D).half()
    cold = torch.randn(16 << 20)  # 64 MB

    def clone(s: int, e: int, d: int) -> None:
        arena[:, :, :, d:d + e - s] = arena[:, :, :, s:e].clone()

    def in_place(s: int, e: int, d: int) -> None:
        shift(arena, s, e, d)

    rates: dict[str, list[float]] = {"in place": [], "through a clone": []}
    ways = (("in place", in_place), ("through a clone", clone))
    for i in range(args.rounds):
        n = SIZES[i % len(SIZES)]
        for name, fn in ways if i % 2 else ways[::-1]:
            cold.mul_(1.0)
            t = time.perf_counter()
            fn(BT, BT + n, 0)
            rates[name].append(n * L * 2 * K * D * 2 / (time.perf_counter() - t) / 1e9)
    print(f"{args.rounds} shifts of {min(SIZES)}-{max(SIZES)} tokens each, {args.threads} threads")
    print("| shift | GB/s median | quartiles |\n|---|---|---|")
    for name, r in rates.items():
        q = statistics.quantiles(r)
        print(f"| {name} | {statistics.median(r):.1f} | {q[0]:.1f}-{q[2]:.1f} |")


if __name__ == "__main__":
    main()
