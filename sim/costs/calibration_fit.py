"""Fitting the ``calibrated`` cost model: non-negative least squares on relative error.

Each measured step contributes a row of features (``sim.costs.features.FEATURES``) and its
measured seconds; the coefficients (seconds per unit of each feature) minimise the sum of squared
*relative* errors, so a 20 ms decode step counts as much as a 2 s prefill, and none is negative
(a negative cost per FLOP would be a fit artefact, not physics).
"""

from __future__ import annotations

import numpy as np


def nnls(A: np.ndarray, b: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """min ||A x - b|| subject to x >= 0 (Lawson and Hanson 1974, the active-set method)."""
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = A.T @ (b - A @ x)
    for _ in range(max_iter):
        if passive.all() or w[~passive].max(initial=-np.inf) <= 1e-12:
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            # step back towards x until a passive coefficient reaches zero
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
        w = A.T @ (b - A @ x)
    return x


def fit_relative(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Coefficients >= 0 minimising sum(((features @ c) - seconds) / seconds) ** 2).  Columns are
    scaled to unit norm for the solve (their units differ by 12 orders of magnitude)."""
    A = features / seconds[:, None]
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    return nnls(A / scale, np.ones(len(seconds))) / scale


def relative_errors(features: np.ndarray, seconds: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Signed (predicted - measured) / measured of each row."""
    return (features @ coef - seconds) / seconds


def fit_with_holdout(features: np.ndarray, seconds: np.ndarray, every: int = 5
                     ) -> tuple[np.ndarray, dict]:
    """The fit on all rows, and its error statistics: in-sample, and on every ``every``-th row
    left out of a second fit (how well the model generalises to steps it was not fitted on)."""
    coef = fit_relative(features, seconds)
    err = np.abs(relative_errors(features, seconds, coef))
    stats = {"num_points": int(len(seconds)), "median_abs_error": float(np.median(err)),
             "p90_abs_error": float(np.percentile(err, 90)), "max_abs_error": float(err.max())}
    held = np.arange(len(seconds)) % every == every - 1
    if held.sum() >= 3 and (~held).sum() > features.shape[1]:
        c = fit_relative(features[~held], seconds[~held])
        h = np.abs(relative_errors(features[held], seconds[held], c))
        stats |= {"holdout_median_abs_error": float(np.median(h)),
                  "holdout_max_abs_error": float(h.max())}
    return coef, stats
