"""The time-energy frontier of a sweep: the configurations no other beats on both median ITL and
J/token, and for each latency deadline the minimum-energy configuration that meets it (the
ML.ENERGY study's selection). Pure functions over (latency, energy) pairs; `provision` also over
operating points (anything with `power_limit_w`, `tokens_per_s` and `energy_per_token_j`).

Provisioning counts a GPU at its power limit (a capped GPU never draws more), so a budget of B
watts holds floor(B / (limit x tp)) replicas of tp GPUs; each replica serves the point's
throughput. Among points whose latency meets the deadline, the plan takes the one with the most
total throughput, ties to the lower energy per token."""

from __future__ import annotations

import dataclasses
import math
from operator import attrgetter
from typing import Callable


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


@dataclasses.dataclass(frozen=True)
class Provision:
    point: object
    replicas: int
    gpus: int
    tokens_per_s: float         # all replicas
    provisioned_w: float        # replicas x tp x limit


def provision(points: list, tp: int | None, budget_w: float, deadline_ms: float,
              latency: Callable[[object], float | None] = attrgetter("median_itl_ms"),
              max_gpus: int | None = None) -> Provision | None:
    """The most throughput `budget_w` W buys within the deadline (None: no point meets it).
    `tp`: GPUs per replica (None: each point's `gpus`); `latency(point)`: its latency in ms (None:
    not measured); `max_gpus`: GPUs available at most (None: as many as the budget holds)."""
    best = None
    for p in points:
        lat = latency(p)
        if lat is None or not math.isfinite(lat) or lat > deadline_ms:
            continue
        n = tp or p.gpus
        replicas = int(budget_w // (p.power_limit_w * n))
        if max_gpus is not None:
            replicas = min(replicas, max_gpus // n)
        cand = Provision(p, replicas, replicas * n, replicas * p.tokens_per_s, replicas * n * p.power_limit_w)
        if best is None or (cand.tokens_per_s, -p.energy_per_token_j) > (best.tokens_per_s,
                                                                         -best.point.energy_per_token_j):
            best = cand
    return best
