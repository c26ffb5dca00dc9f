"""Planning maths shared by the exporter and the load generator: latency deadlines, operating
points, the time-energy frontier, and the power-cap advice drawn from them. Pure functions and
values: no I/O, no other jouletrace module.

Frontier. Over (latency, energy) pairs, the Pareto frontier is the points no other beats on both;
for each latency deadline the choice is the point of least energy whose latency meets it (the
ML.ENERGY study's selection), always on the frontier.

Operating points: a model's measured figures at one power limit (from the exporter's window
history, or from the load generator's result files via `point_from_result`). Points of one model,
configuration (batch size, rate: fixed in a load generator run, the live deployment for the
exporter) and power limit are combined by their medians. Per deadline, the recommended limit is
the least J/token whose latency meets it (`deadline_choices`); it is compared with the highest
limit observed in the same configuration. Fewer than `MIN_LIMITS` distinct limits observed: no
advice, and the reason says so.

A cap's cost (`at_limit`): a GPU capped at C runs no faster than at the highest observed limit at
or below C, so that point's latency, against the highest limit observed, bounds what the cap costs.

Provisioning counts a GPU at its power limit (a capped GPU never draws more), so a budget of B
watts holds floor(B / (limit x tp)) replicas of tp GPUs; each replica serves the point's
throughput. Among points whose latency meets the deadline, the plan (`provision`) takes the one
with the most total throughput, ties to the lower energy per token. Units: W, J, ms, tokens/s (for
image and video models "token" reads image or video).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
from operator import attrgetter
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

BASES = ("median_itl", "p99_tpot", "generation_latency")
MIN_LIMITS = 2


# -- deadlines -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Deadline:
    """A latency deadline: `basis` (median_itl, p99_tpot or generation_latency) at most `ms`."""

    basis: str
    ms: float

    def __str__(self) -> str:
        return f"{self.basis}:{self.ms:g}"


def deadline(text: str) -> Deadline:
    """`[basis:]ms`, basis median_itl (default), p99_tpot or generation_latency."""
    basis, _, ms = text.strip().rpartition(":")
    basis = basis or "median_itl"
    try:
        value = float(ms)
    except ValueError:
        value = math.nan
    if basis not in BASES or not value > 0:
        raise ValueError(f"expected [basis:]ms with basis {', '.join(BASES)} and ms > 0, got {text!r}")
    return Deadline(basis, value)


def deadlines(text: str) -> tuple[Deadline, ...]:
    """Comma-separated `deadline`s; empty: none."""
    return tuple(deadline(part) for part in text.split(",") if part.strip())


def optional_deadline(text: str) -> Deadline | None:
    """A `deadline`, or None for `off` or empty."""
    return None if text.strip().lower() in ("", "off") else deadline(text)


# -- the time-energy frontier ----------------------------------------------------------------
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


def deadline_choices(points: list[tuple[float, float] | None], deadlines_ms: list[float]) -> dict[float, int | None]:
    """For each deadline: the index of the point of least energy whose latency is within it
    (latency <= deadline); ties on energy go to the lower latency, then the earlier point. None
    where no point meets the deadline. The chosen points always lie on the Pareto frontier."""
    usable = [i for i, p in enumerate(points) if _usable(p)]
    out: dict[float, int | None] = {}
    for d in deadlines_ms:
        meet = [i for i in usable if points[i][0] <= d]
        out[d] = min(meet, key=lambda i: (points[i][1], points[i][0], i)) if meet else None
    return out


class PlannedPoint(Protocol):
    """What provisioning reads of a measured or simulated operating point."""

    power_limit_w: float    # per GPU
    gpus: int               # per replica
    tokens_per_s: float     # output tokens/s of one replica
    energy_per_token_j: float


@dataclasses.dataclass(frozen=True)
class Provision:
    """A budget's plan: `replicas` of `point` (an operating point), `gpus` GPUs in all."""

    point: PlannedPoint
    replicas: int
    gpus: int
    tokens_per_s: float         # all replicas
    provisioned_w: float        # replicas x tp x limit


def provision(points: Sequence[PlannedPoint], tp: int | None, budget_w: float, deadline_ms: float,
              latency: Callable[[Any], float | None] = attrgetter("median_itl_ms"),
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


# -- operating points and advice ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """A model's measured figures at one power limit. For image and video models "token" reads
    image or video."""

    model: str
    power_limit_w: float             # per GPU
    energy_per_token_j: float
    tokens_per_s: float              # output tokens/s of all `gpus`
    avg_power_w: float               # per GPU
    latency_ms: Mapping[str, float]  # by basis (BASES); absent where not measured
    gpus: int = 1
    config: str = ""                 # what else was fixed (load generator: task, batch size, rate)
    source: str = "exporter"         # or "loadgen"
    time: float = 0.0                # end of the measurement window, Unix s

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "latency_ms": dict(self.latency_ms)}


def _config_of(result: dict) -> str:
    parts = [str(result.get("task") or "")]
    if result.get("max_num_seqs"):
        parts.append(f"max_num_seqs {result['max_num_seqs']}")
    if result.get("request_rate") not in (None, "inf"):
        parts.append(f"rate {float(result['request_rate']):g}/s")
    if result.get("max_concurrency"):
        parts.append(f"concurrency {result['max_concurrency']}")
    return ", ".join(p for p in parts if p)


def point_from_result(result: dict) -> OperatingPoint | None:
    """A load generator result (JSON of `loadgen run`/`sweep`) as an operating point; None when it
    has no power limit, no energy or was interrupted."""
    if result.get("interrupted") or not isinstance(result.get("power_limit_w"), (int, float)):
        return None
    gpus = len((result.get("energy") or {}).get("gpus") or ()) or 1
    if result.get("item_kind"):
        energy, rate = result.get("energy_per_item_j"), result.get("window_item_throughput")
        latency = {"generation_latency": result.get("median_generation_latency_ms")}
    else:
        energy, rate = result.get("energy_per_token_j"), result.get("window_output_throughput")
        latency = {"median_itl": result.get("median_itl_ms"), "p99_tpot": result.get("p99_tpot_ms")}
    if not isinstance(energy, (int, float)) or not isinstance(rate, (int, float)):
        return None
    window = result.get("window") or {}
    return OperatingPoint(str(result.get("model_id")), float(result["power_limit_w"]), float(energy), float(rate),
                          float(result.get("avg_power_w") or 0.0) / gpus,
                          {k: float(v) for k, v in latency.items() if isinstance(v, (int, float))},
                          gpus, _config_of(result), "loadgen", float(window.get("end") or 0.0))


def combine(points: Iterable[OperatingPoint]) -> list[OperatingPoint]:
    """One point per (model, configuration, GPUs, power limit): the medians of its observations."""
    groups: dict[tuple, list[OperatingPoint]] = collections.defaultdict(list)
    for p in points:
        groups[(p.model, p.config, p.gpus, p.power_limit_w)].append(p)
    out = []
    for (model, config, gpus, limit), ps in sorted(groups.items()):
        bases = [b for b in BASES if any(b in p.latency_ms for p in ps)]
        out.append(OperatingPoint(
            model, limit, statistics.median(p.energy_per_token_j for p in ps),
            statistics.median(p.tokens_per_s for p in ps), statistics.median(p.avg_power_w for p in ps),
            {b: statistics.median(p.latency_ms[b] for p in ps if b in p.latency_ms) for b in bases},
            gpus, config, ps[0].source, max(p.time for p in ps)))
    return out


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """The least-energy limit within `deadline` (`point`), against the highest limit observed in
    the same configuration (`reference`); `reason` says why there is none."""

    deadline: Deadline
    point: OperatingPoint | None
    reference: OperatingPoint | None = None
    reason: str = ""

    @property
    def energy_saving(self) -> float | None:
        """Fraction of the reference's J/token saved."""
        if self.point is None or self.reference is None:
            return None
        return 1.0 - self.point.energy_per_token_j / self.reference.energy_per_token_j

    @property
    def throughput_change(self) -> float | None:
        """Relative change of tokens/s against the reference (negative: a cost)."""
        if self.point is None or self.reference is None:
            return None
        return self.point.tokens_per_s / self.reference.tokens_per_s - 1.0

    @property
    def latency_change(self) -> float | None:
        """Relative change of the deadline's latency against the reference (positive: a cost)."""
        basis = self.deadline.basis
        if self.point is None or self.reference is None or basis not in self.point.latency_ms \
                or basis not in self.reference.latency_ms:
            return None
        return self.point.latency_ms[basis] / self.reference.latency_ms[basis] - 1.0

    def to_dict(self) -> dict:
        return {"basis": self.deadline.basis, "deadline_ms": self.deadline.ms,
                "power_limit_w": self.point.power_limit_w if self.point else None,
                "point": self.point.to_dict() if self.point else None,
                "reference": self.reference.to_dict() if self.reference else None,
                "energy_saving": self.energy_saving, "throughput_change": self.throughput_change,
                "reason": self.reason or None}


@dataclasses.dataclass(frozen=True)
class BudgetRecommendation:
    """The limit whose GPUs, counted at their limit within `budget_w`, serve the most within the
    deadline: `gpus` GPUs in all, `tokens_per_s` together; `reason` says why there is none."""

    deadline: Deadline
    budget_w: float
    point: OperatingPoint | None
    gpus: int = 0
    tokens_per_s: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict:
        return {"basis": self.deadline.basis, "deadline_ms": self.deadline.ms, "budget_w": self.budget_w,
                "power_limit_w": self.point.power_limit_w if self.point else None, "gpus": self.gpus,
                "tokens_per_s": self.tokens_per_s, "point": self.point.to_dict() if self.point else None,
                "reason": self.reason or None}


@dataclasses.dataclass(frozen=True)
class ModelAdvice:
    model: str
    limits_w: tuple[float, ...]          # distinct power limits observed
    points: tuple[OperatingPoint, ...]   # combined
    recommendations: tuple[Recommendation, ...] = ()
    budget: tuple[BudgetRecommendation, ...] = ()
    insufficient: str = ""               # why no advice is given; empty when it is

    def frontier(self, basis: str) -> list[OperatingPoint]:
        """The points no other beats on both `basis` latency and J/token, by increasing latency."""
        pairs = [_pair(p, basis) for p in self.points]
        return [self.points[i] for i in pareto_frontier(pairs)]

    def to_dict(self) -> dict:
        bases = sorted({r.deadline.basis for r in self.recommendations})
        return {"model": self.model, "limits_w": list(self.limits_w), "insufficient_data": self.insufficient or None,
                "recommendations": [r.to_dict() for r in self.recommendations],
                "budget": [b.to_dict() for b in self.budget],
                "frontier": {b: [p.to_dict() for p in self.frontier(b)] for b in bases},
                "points": [p.to_dict() for p in self.points]}


def _pair(p: OperatingPoint, basis: str) -> tuple[float, float] | None:
    lat = p.latency_ms.get(basis)
    return None if lat is None else (lat, p.energy_per_token_j)


def recommend(points: Sequence[OperatingPoint], d: Deadline) -> Recommendation:
    """The least J/token among `points` (combined, one model) whose `d.basis` latency meets `d`."""
    measured = [p for p in points if d.basis in p.latency_ms]
    if not measured:
        return Recommendation(d, None, reason=f"no {d.basis} measured")
    i = deadline_choices([_pair(p, d.basis) for p in measured], [d.ms])[d.ms]
    if i is None:
        fastest = min(measured, key=lambda p: p.latency_ms[d.basis])
        return Recommendation(d, None, reason=f"no observed power limit meets {d.basis} <= {d.ms:g} ms (fastest: "
                                              f"{fastest.latency_ms[d.basis]:.1f} ms at {fastest.power_limit_w:g} W)")
    chosen = measured[i]
    same = [p for p in points if (p.config, p.gpus) == (chosen.config, chosen.gpus)]
    return Recommendation(d, chosen, max(same, key=lambda p: p.power_limit_w))


def at_limit(points: Iterable[OperatingPoint], limit_w: float, d: Deadline) -> list[Recommendation]:
    """Per model and configuration (points combined): the point at the highest observed limit at or
    below `limit_w`, against the one at the highest limit observed; `reason` says why there is none
    (every observed limit above it, or no `d.basis` measured) and whether the point misses `d`."""
    groups: dict[tuple, list[OperatingPoint]] = collections.defaultdict(list)
    for p in combine(points):
        groups[(p.model, p.config, p.gpus)].append(p)
    out = []
    for _, pts in sorted(groups.items()):
        reference = max(pts, key=lambda p: p.power_limit_w)
        below = [p for p in pts if p.power_limit_w <= limit_w]
        if not below:
            out.append(Recommendation(d, None, reference, f"every observed limit is above {limit_w:g} W (lowest: "
                                                          f"{min(p.power_limit_w for p in pts):g} W)"))
            continue
        point = max(below, key=lambda p: p.power_limit_w)
        latency = point.latency_ms.get(d.basis)
        reason = (f"no {d.basis} measured" if latency is None else
                  f"{d.basis} {latency:.1f} ms misses {d.ms:g} ms" if latency > d.ms else "")
        out.append(Recommendation(d, point, reference, reason))
    return out


def recommend_for_budget(points: Sequence[OperatingPoint], d: Deadline, budget_w: float,
                         max_gpus: int | None) -> BudgetRecommendation:
    """The most throughput `budget_w` buys within `d` (`max_gpus`: GPUs available; None: any number)."""
    plan = provision(list(points), None, budget_w, d.ms, lambda p: p.latency_ms.get(d.basis), max_gpus)
    if plan is None:
        return BudgetRecommendation(d, budget_w, None, reason=f"no observed power limit meets {d.basis} <= {d.ms:g} ms")
    if plan.replicas == 0:
        return BudgetRecommendation(d, budget_w, None, reason=f"{budget_w:g} W holds no GPU at any limit that meets "
                                                              f"{d.basis} <= {d.ms:g} ms")
    return BudgetRecommendation(d, budget_w, plan.point, plan.gpus, plan.tokens_per_s)


def advise(points: Iterable[OperatingPoint], deadline_list: Sequence[Deadline], budget_w: float = 0.0,
           max_gpus: int | None = None, min_limits: int = MIN_LIMITS) -> list[ModelAdvice]:
    """Advice per model, from its operating points; see the module docstring."""
    by_model: dict[str, list[OperatingPoint]] = collections.defaultdict(list)
    for p in combine(points):
        by_model[p.model].append(p)
    out = []
    for model, pts in sorted(by_model.items()):
        limits = tuple(sorted({p.power_limit_w for p in pts}))
        if len(limits) < min_limits:
            out.append(ModelAdvice(model, limits, tuple(pts), insufficient=(
                f"{len(limits)} distinct power limit(s) observed; at least {min_limits} are needed")))
            continue
        budget = tuple(recommend_for_budget(pts, d, budget_w, max_gpus) for d in deadline_list) if budget_w else ()
        out.append(ModelAdvice(model, limits, tuple(pts), tuple(recommend(pts, d) for d in deadline_list), budget))
    return out


def describe(advice: Sequence[ModelAdvice]) -> list[str]:
    """One line per model without advice, per recommendation and per budget plan."""
    lines = []
    for a in advice:
        if a.insufficient:
            lines.append(f"{a.model}: not enough data: {a.insufficient}")
            continue
        for r in a.recommendations:
            head = f"{a.model}: {r.deadline.basis} <= {r.deadline.ms:g} ms: "
            if r.point is None:
                lines.append(head + r.reason)
                continue
            p, ref = r.point, r.reference
            text = (f"{p.power_limit_w:g} W{f' ({p.config})' if p.config else ''}: {p.energy_per_token_j:.4f} J/token, "
                    f"{p.latency_ms[r.deadline.basis]:.1f} ms, {p.tokens_per_s:.0f} tokens/s")
            if ref is not None and ref is not p:
                text += (f"; {r.energy_saving:.1%} less energy per token, {r.throughput_change:+.1%} throughput "
                         f"vs {ref.power_limit_w:g} W")
            lines.append(head + text)
        for b in a.budget:
            head = f"{a.model}: {b.budget_w:g} W budget, {b.deadline.basis} <= {b.deadline.ms:g} ms: "
            lines.append(head + (b.reason if b.point is None else
                                 f"{b.gpus} GPUs capped at {b.point.power_limit_w:g} W: {b.tokens_per_s:.0f} tokens/s"))
    return lines
