"""The calibrated model's row knots (``GEMM_ROW_KNOTS``): a forward over a stored context whose
cost is a step function of its query rows, as the matrix-matrix kernels made it here."""

from __future__ import annotations

import numpy as np

from sim.config.model_spec import resolve_model
from sim.costs.calibration_fit import fit_relative, relative_errors
from sim.costs.features import FEATURES, forward_features

# extra milliseconds over a one-row pass, by query rows (the shape measured on SmolLM2-135M,
# 2 threads: dearer at 3-4 rows than at 5-6)
EXTRA_MS = {1: 0, 2: 19, 3: 33, 4: 39, 5: 25, 6: 25, 8: 35, 10: 37, 12: 43, 16: 50}


def _points():
    spec = resolve_model("smollm2-135m")
    rows, seconds = [], []
    shapes = [(b, t, c) for c in (160, 800) for b in (1, 2, 4) for t in (1, 2, 3, 4, 5, 8)]
    for B, T, ctx in [s for s in shapes if s[0] * s[1] in EXTRA_MS]:
        f = forward_features(spec, spec.num_layers, T, np.full(B, ctx), np.zeros((B, 3)), B * T,
                             4.0, 2.0, padded=True)
        rows.append(f)
        seconds.append((41 + B * ctx / 200 + EXTRA_MS[B * T]) / 1e3)  # KV read by each row
    return np.array(rows), np.array(seconds)


def test_the_row_knots_fit_a_step_shaped_cost_that_a_line_in_rows_cannot():
    F, t = _points()
    assert len(t) > 20
    err = np.abs(relative_errors(F, t, fit_relative(F, t)))
    assert err.max() < 0.03
    knots = [i for i, name in enumerate(FEATURES) if name.startswith("gemm_rows_")]
    lined = F.copy()
    lined[:, knots] = 0.0  # the model as it was: per-row terms only
    err_lined = np.abs(relative_errors(lined, t, fit_relative(lined, t)))
    assert err_lined.max() > 0.08
