"""The shared memory bus: max-min fair water-filling, and SimPy traces of overlapping transfers."""

from __future__ import annotations

import pytest
import simpy

from sim.costs.bus import SharedBus, water_fill


# -- water_fill: hand-computed --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("demands", "capacity", "rates"),
    [
        # fair share 40 > 10: 10 served; 110 left for 2 -> 55 > 50: 50 served; 60 left for 100
        ([10, 50, 100], 120, [10, 50, 60]),
        ([100, 10, 50], 120, [60, 10, 50]),  # the same, in another order
        ([10, 20], 100, [10, 20]),  # all under capacity: each gets its demand
        ([100, 100, 100], 90, [30, 30, 30]),  # equal split
        ([30, 30, 60], 100, [30, 30, 40]),  # 33.3 > 30 twice; 40 left for the last
        ([80, 60], 100, [50, 50]),  # both above the fair share 50
        ([80, 30], 100, [70, 30]),  # the small one whole, the big one the rest
        ([50], 20, [20]),  # one transfer never gets more than the bus
        ([], 100, []),
    ],
)
def test_water_fill(demands, capacity, rates):
    assert water_fill(demands, capacity) == pytest.approx(rates)


# -- SharedBus in SimPy ---------------------------------------------------------------------------
def run_transfers(capacity, transfers):
    """Run ``(name, start_s, bytes, demand)`` transfers on one bus; returns [(name, done_s)]."""
    env = simpy.Environment()
    bus = SharedBus(env, capacity)
    log = []

    def proc(name, start_s, num_bytes, demand):
        yield env.timeout(start_s)
        yield bus.transfer(num_bytes, demand)
        log.append((name, env.now))

    for t in transfers:
        env.process(proc(*t))
    env.run()
    return log, bus


def test_transfer_alone_takes_bytes_over_demand():
    log, bus = run_transfers(100.0, [("a", 0.0, 300.0, 60.0)])
    assert log == [("a", pytest.approx(5.0))]  # 300 B at 60 B/s
    assert bus.max_concurrent == 1


def test_transfer_alone_is_capped_by_the_bus():
    log, _ = run_transfers(100.0, [("a", 1.0, 300.0, 200.0)])
    assert log == [("a", pytest.approx(4.0))]  # starts at 1, 300 B at min(200, 100) B/s


def test_overlapping_transfers_share_the_bus():
    # capacity 100 B/s.  a: 160 B wanting 80 B/s from t=0;  b: 60 B wanting 60 B/s from t=1.
    #   t=0..1   a alone at 80 B/s           -> a has 80 B left
    #   t=1      both: fair share 50 < 60, 80 -> 50 B/s each
    #   t=1..2.2 b moves 60 B at 50 B/s      -> b done at 2.2; a has 80 - 60 = 20 B left
    #   t=2.2    a alone again at 80 B/s     -> 20 / 80 = 0.25 s, a done at 2.45
    # (alone, a would end at 2.0 and b at 2.0)
    log, bus = run_transfers(100.0, [("a", 0.0, 160.0, 80.0), ("b", 1.0, 60.0, 60.0)])
    assert log == [("b", pytest.approx(2.2)), ("a", pytest.approx(2.45))]
    assert bus.max_concurrent == 2


def test_small_demand_is_served_whole():
    # capacity 100 B/s, both from t=0.  a: 140 B wanting 80;  b: 45 B wanting 30.
    #   water-fill: b gets 30 (< fair share 50), a gets the remaining 70
    #   t=0..1.5  b moves 45 B at 30 B/s -> b done at 1.5; a moved 105 B, 35 B left
    #   t=1.5     a alone at 80 B/s: 35 / 80 = 0.4375 s -> a done at 1.9375
    log, _ = run_transfers(100.0, [("a", 0.0, 140.0, 80.0), ("b", 0.0, 45.0, 30.0)])
    assert log == [("b", pytest.approx(1.5)), ("a", pytest.approx(1.9375))]


def test_transfers_under_capacity_do_not_slow_each_other():
    # 40 + 50 <= 100 B/s: each runs at its demand, as if alone
    log, _ = run_transfers(100.0, [("a", 0.0, 120.0, 40.0), ("b", 0.5, 100.0, 50.0)])
    assert log == [("b", pytest.approx(2.5)), ("a", pytest.approx(3.0))]


def test_three_transfers_join_and_leave():
    # capacity 90 B/s, each wanting 90 B/s.
    #   t=0..1  a alone at 90 B/s        -> a has 180 - 90 = 90 B left
    #   t=1..2  a, b at 45 B/s each      -> a 45 B left, b 90 - 45 = 45 B left
    #   t=2..3  a, b, c at 30 B/s each   -> c (30 B) done at 3; a, b 15 B left each
    #   t=3     a, b at 45 B/s each      -> 15 / 45 s: both done at 3 1/3
    log, bus = run_transfers(90.0, [("a", 0.0, 180.0, 90.0), ("b", 1.0, 90.0, 90.0),
                                    ("c", 2.0, 30.0, 90.0)])
    assert log == [("c", pytest.approx(3.0)), ("a", pytest.approx(10 / 3)),
                   ("b", pytest.approx(10 / 3))]
    assert bus.max_concurrent == 3


def test_zero_bytes_complete_at_once():
    env = simpy.Environment()
    bus = SharedBus(env, 100.0)
    log = []

    def proc():
        yield env.timeout(2.0)
        yield bus.transfer(0, 50.0)
        log.append(("empty", env.now))

    env.process(proc())
    env.run()
    assert log == [("empty", 2.0)]
    assert bus.max_concurrent == 0
