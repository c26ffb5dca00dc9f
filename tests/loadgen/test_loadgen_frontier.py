"""The time-energy frontier and the deadline selection, on hand-made (median ITL ms, J/token) points."""

from __future__ import annotations

import math

from jouletrace.planning import deadline_choices, pareto_frontier

# batch:            8           16           32           64          128          256
POINTS = [(20.0, 1.00), (25.0, 0.60), (40.0, 0.70), (60.0, 0.35), (120.0, 0.30), (300.0, 0.31)]


def test_frontier_drops_dominated_points_in_latency_order():
    # (40, 0.70) is beaten by (25, 0.60); (300, 0.31) by (120, 0.30)
    assert pareto_frontier(POINTS) == [0, 1, 3, 4]


def test_frontier_ignores_missing_and_non_finite_points_and_repeats():
    pts = [None, (10.0, 2.0), (10.0, 2.0), (float("nan"), 0.1), (10.0, 1.0), (5.0, math.inf), (None, 0.5)]
    assert pareto_frontier(pts) == [4]
    assert pareto_frontier([]) == []


def test_frontier_ties_on_latency_keep_the_lower_energy_only():
    assert pareto_frontier([(10.0, 3.0), (10.0, 1.0), (20.0, 1.0)]) == [1]


def test_deadlines_pick_the_least_energy_within_each():
    got = deadline_choices(POINTS, [15.0, 20.0, 50.0, 100.0, 250.0, 1000.0])
    assert got == {15.0: None, 20.0: 0, 50.0: 1, 100.0: 3, 250.0: 4, 1000.0: 4}


def test_deadline_choices_lie_on_the_frontier():
    front = set(pareto_frontier(POINTS))
    for d in (20.0, 30.0, 59.9, 60.0, 500.0):
        assert deadline_choices(POINTS, [d])[d] in front


def test_deadline_energy_ties_go_to_lower_latency():
    assert deadline_choices([(50.0, 0.5), (30.0, 0.5), (10.0, 0.9)], [100.0]) == {100.0: 1}
