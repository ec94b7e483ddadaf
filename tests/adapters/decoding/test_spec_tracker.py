"""The statistics a speculation policy observes in a real run
(adapters.decoding.speculative.SpecTracker): the planner's acceptance and cost EWMAs, the verify
growth per guess, the same figures as sim/engine/planner.py from the same steps, and the "marginal"
cost attribution."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from adapters.decoding.speculative import SpecTracker  # noqa: E402


def test_tracker_keeps_the_planners_statistics():
    t = SpecTracker()
    t.record(4, 4, draft_s=0.4, verify_s=1.0)  # all kept: fraction 1
    assert (t.acceptance, t.last_all_accepted, t.draft_token_s, t.verify_s) == (1.0, True, 0.1,
                                                                                1.0)
    t.record(4, 1, draft_s=0.8, verify_s=2.0)  # 1 kept, 1 rejection: fraction 1/2
    assert t.acceptance == pytest.approx(0.8 * 1.0 + 0.2 * 0.5)
    assert t.draft_token_s == pytest.approx(0.8 * 0.1 + 0.2 * 0.2)
    assert t.verify_s == pytest.approx(0.8 * 1.0 + 0.2 * 2.0)
    assert list(t.history) == [1.0, 0.5] and not t.last_all_accepted
    t.record(0, 0, draft_s=0.0, verify_s=1.0)  # a plain step: only the verify EWMA moves
    assert t.steps_since_draft == 1 and t.last_k == 0 and list(t.history) == [1.0, 0.5]
    obs = t.observation(max_draft_len=6)
    assert (obs.max_draft_len, obs.batch_size, obs.steps_since_draft) == (6, 1, 1)


def test_tracker_measures_the_verify_growth_per_guess():
    t = SpecTracker()
    t.record(0, 0, draft_s=0.0, verify_s=0.5)  # a plain step: the plain pass
    assert t.observation(4).verify_s == 0.5 and t.observation(4).verify_token_s == 0.0
    t.record(2, 1, draft_s=0.2, verify_s=0.9)  # (0.9 - 0.5) / 2 = 0.2 extra verify per guess
    obs = t.observation(4)
    assert (obs.verify_s, obs.draft_token_s, obs.verify_token_s) == pytest.approx((0.5, 0.1, 0.2))
    t.record(1, 1, draft_s=0.1, verify_s=0.5)  # flat: a measured 0, averaged in
    assert t.observation(4).verify_token_s == pytest.approx(0.8 * 0.2)
    t.record(0, 0, draft_s=0.0, verify_s=0.6)
    assert t.observation(4).verify_s == pytest.approx(0.8 * 0.5 + 0.2 * 0.6)
    assert t.verify_s == pytest.approx(0.8 * (0.8 * (0.8 * 0.5 + 0.2 * 0.9) + 0.2 * 0.5) + 0.12)


def test_tracker_and_planner_keep_the_same_cost_statistics():
    from types import SimpleNamespace

    from sim.engine.planner import Planner
    from sim.engine.spec_signals import SpecSignals

    planner = Planner.__new__(Planner)  # only the cost statistics are exercised
    planner.signals = SpecSignals()
    tracker = SpecTracker()
    steps = [(0, 0.0, 0.5), (3, 0.3, 1.1), (1, 0.1, 0.7), (0, 0.0, 0.6), (2, 0.25, 0.8)]
    for k, draft_s, verify_s in steps:
        segments = [("cpu", "draft", draft_s), ("cpu", "verify" if k else "decode", verify_s)]
        planner.observe(SimpleNamespace(phase="decode", draft_len=k),
                        SimpleNamespace(segments=segments, elapsed_s=draft_s + verify_s,
                                        proposed=None))
        tracker.record(k, 0, draft_s, verify_s)
        for name in ("verify_s", "plain_verify_s", "draft_token_s", "verify_token_s"):
            assert getattr(planner.signals, name) == pytest.approx(getattr(tracker, name)), name


def test_marginal_costs_charge_the_extra_verify_time_to_the_guesses():
    t = SpecTracker(costs="marginal")
    t.record(4, 4, draft_s=0.4, verify_s=1.0)  # no plain step yet: as the planner
    assert (t.draft_token_s, t.verify_s) == (0.1, 1.0)
    t.record(0, 0, draft_s=0.0, verify_s=0.5)  # a plain step: 0.5 s
    assert t.observation(4).verify_s == 0.5
    t.record(2, 1, draft_s=0.2, verify_s=0.9)  # (0.2 + 0.9 - 0.5) / 2 = 0.3 per guess
    assert t.draft_token_s == pytest.approx(0.8 * 0.1 + 0.2 * 0.3)
    assert t.observation(4).verify_s == 0.5
    assert t.observation(4).verify_token_s == 0.0  # folded into draft_token_s
