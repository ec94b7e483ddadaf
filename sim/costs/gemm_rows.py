"""The query-row knots of the ``calibrated`` cost model's features (``gemm_rows_N`` in
``sim.costs.features.FEATURES``)."""

from __future__ import annotations

import numpy as np

# query rows at which a forward over a stored context has a cost of its own (``gemm_rows_N``),
# read in between as a line between the two nearest: the matrix-matrix product's kernels make
# it a step function of the rows, not a line (measured, SmolLM2-135M, 2 threads: 41 ms at 1
# row, 60 at 2, 74-80 at 3-4, 66 at 5-6, 76-82 at 8-10, 84-92 at 12-16)
GEMM_ROW_KNOTS = (2, 3, 4, 5, 6, 8, 12, 16)
NO_KNOTS = np.zeros(len(GEMM_ROW_KNOTS))


def gemm_row_weights(rows: int) -> np.ndarray:
    """``rows`` query rows as weights on ``GEMM_ROW_KNOTS`` (a hat function a knot: the two
    knots around it share 1 by distance; below the first or above the last, that knot's)."""
    knots = GEMM_ROW_KNOTS
    out = np.zeros(len(knots))
    r = min(max(rows, knots[0]), knots[-1])
    i = int(np.searchsorted(knots, r))
    if knots[i] == r:
        out[i] = 1.0
    else:
        lo, hi = knots[i - 1], knots[i]
        out[i - 1], out[i] = (hi - r) / (hi - lo), (r - lo) / (hi - lo)
    return out
