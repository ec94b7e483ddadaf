"""What an n-gram lookup's time follows: one-row lookups over Shakespeare's tokens, each timed as
one call (as the executor times a step's lookups), fitted against the work the lookup did.

    python benchmarks/ngram_lookups.py [--lookups 4000] [--seed 0]

Each lookup runs ``NgramDraft.propose`` (k = 4) over a slice of 150-700 tokens of the first play
(SmolLM2's tokenizer), after a 20,000-element allocation (a forward runs between a step's
lookups).  Least squares of the time in microseconds on: the tokens examined alone (what the
calibrated model priced before 2026-12-05), with the n-gram size that matched, with the slices
compared (starts whose first token matched), with whether an n-gram was found, and with both.
Reports each form's coefficients and median |error| (in sample: the form's ceiling).
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np


def lookups(n: int, seed: int) -> list[tuple[float, int, int, bool, int]]:
    """-> (seconds, tokens examined, slices compared, found, matched size) per lookup."""
    from adapters.decoding.drafting import NgramDraft
    from adapters.model.loading import load_model
    from adapters.model.text import play_names, play_text

    tok = load_model("smollm2-135m", dtype="float32", device="cpu").tokenizer
    corpus = tok.encode(play_text(play_names()[0]))
    rng = np.random.default_rng(seed)
    draft = NgramDraft()
    out = []
    gc.disable()
    try:
        for _ in range(n):
            length = int(rng.integers(150, 700))
            start = int(rng.integers(0, len(corpus) - length))
            tokens = corpus[start:start + length]
            big = [0] * 20_000  # caches disturbed, as by a forward between two steps' lookups
            del big
            t0 = time.perf_counter()
            found, _ = draft.propose(0, tokens, 4)
            seconds = time.perf_counter() - t0
            out.append((seconds, draft.scanned, draft.compared, bool(found),
                        _matched_size(tokens) if found else 0))
    finally:
        gc.enable()
    return out


def _matched_size(tokens: list[int], max_ngram: int = 3) -> int:
    """The n-gram size whose lookup proposed (each size alone, largest first, as ``propose``
    tries them)."""
    from adapters.decoding.drafting import NgramDraft

    return next((size for size in range(min(max_ngram, len(tokens) - 1), 0, -1)
                 if NgramDraft(max_ngram=size, min_ngram=size).propose(0, tokens, 4)[0]), 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lookups", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = lookups(args.lookups, args.seed)
    y = np.array([r[0] for r in rows]) * 1e6
    scan = np.array([r[1] for r in rows], float)
    compares = np.array([r[2] for r in rows], float)
    found = np.array([r[3] for r in rows], float)
    sizes = np.array([[r[4] == s for s in (2, 1, 0)] for r in rows], float)
    one = np.ones(len(rows))
    forms = {
        "tokens examined": [scan, one],
        "tokens examined, size matched": [scan, *sizes.T, one],
        "tokens examined, slices compared": [scan, compares, one],
        "tokens examined, slices compared, found": [scan, compares, found, one],
        "tokens examined, slices compared, size matched": [scan, compares, *sizes.T, one],
    }
    print(f"{len(rows)} lookups: median {np.median(y):.1f} µs, {np.median(scan):.0f} tokens "
          f"examined, {np.median(compares):.0f} slices compared, {found.mean():.0%} found one")
    print("| form | coefficients (µs; the last: per lookup) | median \\|error\\| |")
    print("|---|---|---|")
    for name, cols in forms.items():
        a = np.stack(cols, axis=1)
        coef = np.linalg.lstsq(a, y, rcond=None)[0]
        err = np.median(np.abs(a @ coef - y) / y)
        print(f"| {name} | {', '.join(f'{c:.4g}' for c in coef)} | {err:.1%} |")


if __name__ == "__main__":
    main()
