"""The planner's maths and forms without a Prometheus: the water level of per-GPU peaks against a
brute-force search, the risk quantile's exceedance, budgets and durations as options take them,
the latency a cap costs (jouletrace.planning.at_limit), and the admin API's steps."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jouletrace.budget.actuators import steps_down
from jouletrace.budget.analysis import CapSearch, risk_level, servers_fit, water_levels
from jouletrace.budget.plan import budgets
from jouletrace.budget.prometheus import duration, promql_duration
from jouletrace.planning import Deadline, OperatingPoint, at_limit


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1000), min_size=1, max_size=6).map(lambda r: r), min_size=1, max_size=5),
       st.floats(10, 4000))
def test_the_water_level_is_the_greatest_cap_that_meets_the_target(rows, target):
    n = max(len(r) for r in rows)
    peaks = np.array([r + [math.nan] * (n - len(r)) for r in rows])
    levels = water_levels(peaks, target)
    for row, c in zip(np.nan_to_num(peaks), levels):
        if row.sum() <= target:
            assert c == math.inf
            continue
        assert np.minimum(row, c).sum() == pytest.approx(target, rel=1e-9, abs=1e-6)  # meets it, and no higher C does
        assert np.minimum(row, c + 1e-3).sum() > target


def test_the_cap_search_keeps_the_least_level_and_its_step():
    search = CapSearch(1000.0)
    search.add(np.array([10.0, 20.0]), np.array([[600.0, 600.0], [400.0, 400.0]]))  # 500 at 10 s; none at 20 s
    search.add(np.array([30.0]), np.array([[900.0, 200.0]]))                         # 800 at 30 s
    assert (search.cap_w, search.at) == (500.0, 10.0)


def test_at_most_the_risk_share_exceeds_the_risk_level():
    values = np.random.default_rng(1).gamma(2.0, 100.0, 10_000)
    for risk in (0.0, 0.001, 0.01, 0.1):
        level = risk_level(values, risk)
        assert (values > level).mean() <= risk
        assert level in values
    assert servers_fit(8, 40_000, 30_000) == 10 and servers_fit(8, 40_000, 40_000) == 8
    with pytest.raises(ValueError):
        servers_fit(8, 40_000, 0.0)


def test_budgets_and_durations_as_the_options_take_them():
    b = budgets("r1=40000, r2=30000, 35000")
    assert (b.of("r1", "rack"), b.of("r2", "rack"), b.of("r9", "rack")) == (40000, 30000, 35000)
    with pytest.raises(Exception, match="no budget for rack=r9"):
        budgets("r1=40000").of("r9", "rack")
    for bad in ("", "r1=", "-5", "r1=abc", "inf"):
        with pytest.raises(ValueError):
            budgets(bad)
    assert (duration("90s"), duration("15m"), duration("30d"), duration("250ms"), duration("42")) == \
        (90, 900, 30 * 86400, 0.25, 42)
    for bad in ("", "0s", "-1h", "5x", "d"):
        with pytest.raises(ValueError):
            duration(bad)
    assert (promql_duration(60), promql_duration(0.25)) == ("60s", "250ms")


def _point(limit, itl, tps, energy=0.5):
    return OperatingPoint("llama", limit, energy, tps, limit * 0.9, {"median_itl": itl}, 4, "chat")


def test_the_latency_of_a_cap_is_the_highest_measured_limit_at_or_below_it():
    points = [_point(700, 20.0, 1000), _point(500, 22.0, 950), _point(400, 30.0, 800), _point(500, 24.0, 930)]
    [r] = at_limit(points, 620.0, Deadline("median_itl", 25.0))
    assert (r.point.power_limit_w, r.reference.power_limit_w) == (500, 700)
    assert r.point.latency_ms["median_itl"] == 23.0           # the two 500 W points combined by their median
    assert r.latency_change == pytest.approx(0.15) and r.reason == ""
    [r] = at_limit(points, 450.0, Deadline("median_itl", 25.0))
    assert r.point.power_limit_w == 400 and "misses 25 ms" in r.reason
    [r] = at_limit(points, 300.0, Deadline("median_itl", 25.0))
    assert r.point is None and "every observed limit is above 300 W" in r.reason and r.latency_change is None


def test_the_admin_api_goes_down_in_steps_of_the_guard():
    assert steps_down(700, 455, 100) == [600, 500, 455]
    assert steps_down(700, 700, 100) == [] and steps_down(500, 600, 100) == []
