"""The time-energy frontier of a sweep: the configurations no other beats on both median ITL and
J/token, and for each latency deadline the minimum-energy configuration that meets it (the
ML.ENERGY study's selection). Pure functions over (latency, energy) pairs."""

from __future__ import annotations

import math


def _usable(p) -> bool:
    return (p is not None and len(p) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in p))


def pareto_frontier(points: list[tuple[float, float] | None]) -> list[int]:
    """Indices of the points (latency, energy) that no other point beats or ties on both
    coordinates with one strictly better, in increasing latency (decreasing energy). Lower is
    better on both axes; a point that repeats an earlier one is listed once; None and non-finite
    points are ignored."""
    order = sorted((i for i, p in enumerate(points) if _usable(p)), key=lambda i: (points[i][0], points[i][1], i))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def deadline_choices(points: list[tuple[float, float] | None], deadlines: list[float]) -> dict[float, int | None]:
    """For each deadline: the index of the point of least energy whose latency is within it
    (latency <= deadline); ties on energy go to the lower latency, then the earlier point. None
    where no point meets the deadline. The chosen points always lie on the Pareto frontier."""
    usable = [i for i, p in enumerate(points) if _usable(p)]
    out: dict[float, int | None] = {}
    for d in deadlines:
        meet = [i for i in usable if points[i][0] <= d]
        out[d] = min(meet, key=lambda i: (points[i][1], points[i][0], i)) if meet else None
    return out
