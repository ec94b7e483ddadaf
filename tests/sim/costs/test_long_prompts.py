"""The calibrated model's long observed prompts (``observed_prompt_long_scores``): past 512
tokens each attention score an observed prompt measures costs more, on a ramp to 2,048."""

from __future__ import annotations

import numpy as np

from sim.config.model_spec import resolve_model
from sim.costs.calibration_fit import fit_relative, relative_errors
from sim.costs.features import FEATURES, forward_features

SPEC = resolve_model("smollm2-135m")
SCORES, LONG = FEATURES.index("observed_prompt_scores"), FEATURES.index(
    "observed_prompt_long_scores")


def _prompt(tokens: int, observed: bool = True) -> np.ndarray:
    return forward_features(SPEC, SPEC.num_layers, tokens, np.zeros(1), np.zeros((1, 3)), 1,
                            4.0, 2.0, padded=True, observed=observed)


def test_the_long_term_is_a_ramp_on_the_prompts_scores():
    assert _prompt(512)[SCORES] > 0 and _prompt(512)[LONG] == 0.0
    assert _prompt(1280)[LONG] == 0.5 * _prompt(1280)[SCORES]
    assert _prompt(2048)[LONG] == _prompt(2048)[SCORES]
    assert _prompt(4096)[LONG] == _prompt(4096)[SCORES]
    assert _prompt(2048, observed=False)[LONG] == 0.0
    stored = forward_features(SPEC, SPEC.num_layers, 1, np.array([2047.0]), np.zeros((1, 3)), 1,
                              4.0, 2.0, padded=True, observed=True)
    assert stored[LONG] == 0.0  # a decode step's scores are the decode steps' term


def test_it_fits_scores_that_grow_dearer_past_the_caches_which_one_rate_cannot():
    """Observed prompts whose extra cost per score doubles from 512 to 2,048 tokens (the shape
    both backends measured, 2026-12-05), beside unobserved ones: one rate misses them both ways."""
    tokens = (96, 256, 512, 768, 1024, 1536, 2048)
    rows, seconds = [], []
    for t in tokens:
        for observed in (False, True):
            f = _prompt(t, observed)
            base = 0.02 + 1.6e-3 * t  # seconds: a forward's fixed cost and per prompt token
            per_score = 2e-9 * (1 + min(max((t - 512) / 1536, 0.0), 1.0))
            rows.append(f)
            seconds.append(base + (per_score * f[SCORES] if observed else 0.0))
    F, s = np.array(rows), np.array(seconds)
    err = np.abs(relative_errors(F, s, fit_relative(F, s)))
    assert err.max() < 0.01
    one_rate = F.copy()
    one_rate[:, LONG] = 0.0
    assert np.abs(relative_errors(one_rate, s, fit_relative(one_rate, s))).max() > 0.05
