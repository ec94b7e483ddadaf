"""The shadow's noise floor (``sim.run.shadow.noise_floor``): what the same step measured in
other repeats differs by, the best any cost model that prices a plan can do."""

import numpy as np

from sim.run.shadow import noise_floor, summarize


def _rows(repeats: int, steps: int, spread: float, bias: float = 0.0, seed: int = 3):
    """``steps`` decode steps of a deterministic schedule measured ``repeats`` times: each step's
    expected time its own (1-50 ms), each measurement off it by Gaussian noise of ``spread``
    (relative); the model predicts the expected time times ``1 + bias``."""
    rng = np.random.default_rng(seed)
    expected = rng.uniform(1e-3, 50e-3, steps)
    rows = []
    for rep in range(1, repeats + 1):
        noise = 1 + spread * rng.standard_normal(steps)
        for i in range(steps):
            rows.append({"repeat": rep, "step": i, "phase": "decode", "batch": 2,
                         "num_tokens": 2, "attended_pairs": 100 + i,
                         "predicted_decode_s": expected[i] * (1 + bias),
                         "measured_decode_s": expected[i] * noise[i]})
    return rows


def test_a_model_of_the_expected_times_sits_at_the_floor_the_twins_tell():
    """Noise of 6 % (a median |error| of 0.674 x 6 % = 4.0 % for a perfect model): the floor
    from 3 repeats reads it, and a perfect model's median |error| on the same steps is it;
    without the leave-one-out correction the floor would read 22 % high."""
    floor = noise_floor(_rows(3, 3000, 0.06), "decode")
    assert floor["floor_steps"] == 9000
    assert abs(floor["floor"] - 0.674 * 0.06) < 0.003
    assert abs(floor["floor_abs"] - floor["floor"]) < 0.003


def test_a_biased_model_stands_above_its_floor_by_about_its_bias():
    biased = noise_floor(_rows(3, 3000, 0.02, bias=0.10), "decode")
    assert biased["floor"] < 0.02 and 0.08 < biased["floor_abs"] < 0.12


def test_the_floor_grows_with_the_noise_and_not_with_the_repeats():
    two, five = (noise_floor(_rows(n, 2000, 0.05), "decode")["floor"] for n in (2, 5))
    wide = noise_floor(_rows(3, 2000, 0.10), "decode")["floor"]
    assert abs(two - five) < 0.003
    assert 1.8 < wide / noise_floor(_rows(3, 2000, 0.05), "decode")["floor"] < 2.2


def test_only_steps_with_the_same_plan_in_another_repeat_are_twins():
    """A step that took another path in one repeat (here: another context) has no twin there;
    rows of one repeat, or rows that carry no repeat, tell no floor."""
    rows = _rows(2, 10, 0.05)
    rows[3]["attended_pairs"] += 1  # repeat 1, step 3: another plan
    assert noise_floor(rows, "decode")["floor_steps"] == 18
    assert noise_floor(_rows(1, 10, 0.05), "decode") is None
    assert noise_floor([{k: v for k, v in r.items() if k != "repeat"}
                        for r in _rows(2, 10, 0.05)], "decode") is None


def test_variants_are_kept_apart_and_the_summary_carries_the_floor():
    """Two variants whose plans coincide step for step are not each other's twins."""
    a = [{**r, "variant": "a"} for r in _rows(1, 50, 0.05, seed=1)]
    b = [{**r, "variant": "b", "repeat": 2} for r in _rows(1, 50, 0.05, seed=1)]
    assert "floor" not in summarize(a + b)["decode"]
    both = summarize([{**r, "variant": "a"} for r in _rows(2, 50, 0.05)])["decode"]
    assert both["floor_steps"] == 100 and both["floor"] > 0
