import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jouletrace.exporter.gpu.timeline import EnergyTimeline


def test_settlement_is_exact_and_shaped_by_power():
    tl = EnergyTimeline()
    tl.start(0.0)
    # power 100 W for the first second, 300 W for the second
    for i in range(1, 20):
        tl.add_power(i * 0.1, 100.0 if i <= 10 else 300.0)
    tl.settle(2.0, 500.0)
    assert tl.total_j == 500.0
    assert tl.energy(0.0, 2.0) == pytest.approx(500.0, rel=1e-12)
    # the second second drew about three times the first
    first, second = tl.energy(0.0, 1.0), tl.energy(1.0, 2.0)
    assert second / first == pytest.approx(3.0, rel=0.15)


def test_no_power_samples_spread_evenly():
    tl = EnergyTimeline()
    tl.start(10.0)
    tl.settle(14.0, 40.0)
    assert tl.energy(10.0, 11.0) == pytest.approx(10.0)
    assert tl.pending_integral(15.0) == 0.0


def test_out_of_range_queries_raise():
    tl = EnergyTimeline()
    tl.start(0.0)
    tl.settle(1.0, 5.0)
    with pytest.raises(ValueError):
        tl.energy(0.0, 1.5)
    with pytest.raises(ValueError):
        tl.settle(0.5, 1.0)
    with pytest.raises(ValueError):
        tl.settle(2.0, -1.0)


def test_retention_bounds_memory():
    tl = EnergyTimeline(retention_s=60.0)
    tl.start(0.0)
    t = 0.0
    for n in range(1, 601):  # 10 minutes of 100 ms samples, settled every 2 s
        t = n * 0.1
        tl.add_power(t, 200.0)
        if n % 20 == 0:
            tl.settle(t, 400.0)
    assert len(tl) <= 60 / 0.1 + 60 / 2 + 2  # samples plus settlements
    assert tl.oldest >= t - 60.0 - 2.0
    assert tl.total_j == pytest.approx(200.0 * t)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 3.0), st.floats(0.0, 1000.0), st.booleans()), min_size=1, max_size=60))
def test_totals_equal_the_sum_of_settlements(events):
    """Whatever the power samples, the timeline's total equals what was settled, and stays monotonic."""
    tl = EnergyTimeline()
    tl.start(0.0)
    t, settled = 0.0, 0.0
    for dt, watts, settle in events:
        t += dt
        tl.add_power(t, watts)
        if settle:
            e = watts * dt
            tl.settle(t + 1e-3, e)
            settled += e
            t += 1e-3
    assert tl.total_j == pytest.approx(settled, rel=1e-9, abs=1e-9)
    grid = np.linspace(tl.oldest, tl.settled_until, 50)
    assert np.all(np.diff(tl.energy_at(grid)) >= -1e-9)
