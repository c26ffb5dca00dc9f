"""Power-cap advice: the power limit that spends the least energy per output within a latency
deadline, from measured operating points, and the headroom between each GPU's limit and its draw.

Operating points come from two places:
- the exporter's own history: every `--window` seconds, each model's window figures (the ledger's
  J/token and tokens/s, the GPUs' average power) with the power limit in force over the whole
  window and the latency of the requests that ended in it, estimated from their spans: a request's
  inter-token latency is its decode time / (output tokens - 1). Median ITL weights each request by
  its token gaps; p99 TPOT is over requests; diffusion requests give their generation latency (span
  duration). Windows in which the limit changed, or GPUs' limits differ, are not observed.
- the load generator's result files (`power_limit_w`, set by `loadgen sweep --power-limits`).

Points of one model, configuration (batch size, rate: fixed in a load generator run, the live
deployment for the exporter) and power limit are combined by their medians. Per deadline, the
recommended limit is the least J/token whose latency meets it (`loadgen.frontier.deadline_choices`,
the time-energy frontier's choice); it is compared with the highest limit observed in the same
configuration. With a power budget, the recommended limit is the one whose GPUs, counted at their
limit, give the most throughput within the deadline (`loadgen.frontier.provision`). Fewer than two
distinct limits observed: no advice, and the reason says so.

Headroom: a GPU's enforced limit minus the 99th percentile of its power over the window (power at
the timeline's resolution, 100 ms): what oversubscribing a power budget relies on.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import statistics
import threading
import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from aiohttp import web

from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.ledger.ledger import SEEN_PER_PENDING, Ledger
from jouletrace.exporter.ledger.records import RequestBatch
from jouletrace.exporter.powercap import actuation
from jouletrace.loadgen.frontier import deadline_choices, pareto_frontier, provision

log = logging.getLogger(__name__)

BASES = ("median_itl", "p99_tpot", "generation_latency")
HISTORY_WINDOWS = 1440  # observations kept: a day of 60 s windows
HEADROOM_PERCENTILE = 99.0
POLL_S = 1.0  # how often the limits in force are read
PASS_S = 1.0  # the ledger's attribution period: its window's granularity
MIN_LIMITS = 2


# -- options --------------------------------------------------------------------------------
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


def switch(text: str) -> bool:
    """`on`/`off` (also true/false, 1/0, yes/no)."""
    value = text.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no", ""):
        return False
    raise ValueError(f"expected on or off, got {text!r}")


def non_negative(text: str) -> float:
    """A number >= 0 (W or s; 0 often means "not set")."""
    value = float(text)
    if not value >= 0:
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return value


@dataclasses.dataclass(frozen=True)
class PowerCapConfig:
    """The `--powercap-*` options (README: Configuration)."""

    actuation: bool = False
    token_file: str = ""
    min_w: float = 0.0
    max_w: float = 0.0
    max_step_w: float = 100.0
    cooldown_s: float = 60.0
    guard: Deadline | None = Deadline("median_itl", 100.0)
    rollback_windows: int = 3
    audit_log: str = ""
    deadlines: tuple[Deadline, ...] = (Deadline("median_itl", 50.0), Deadline("median_itl", 100.0),
                                       Deadline("median_itl", 250.0))
    budget_w: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> "PowerCapConfig":
        """From the exporter's configuration (its `powercap_*` fields)."""
        return cls(actuation=cfg.powercap_actuation, token_file=cfg.powercap_token_file, min_w=cfg.powercap_min,
                   max_w=cfg.powercap_max, max_step_w=cfg.powercap_max_step, cooldown_s=cfg.powercap_cooldown,
                   guard=cfg.powercap_guard_deadline, rollback_windows=cfg.powercap_rollback_windows,
                   audit_log=cfg.powercap_audit_log, deadlines=cfg.powercap_deadlines, budget_w=cfg.powercap_budget)

    def policy(self) -> actuation.Policy:
        return actuation.Policy(self.min_w, self.max_w, self.max_step_w, self.cooldown_s, self.guard,
                                self.rollback_windows)


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


# -- latency from spans ----------------------------------------------------------------------
class SpanLatency:
    """The span intake's sink: passes each batch to the ledger and keeps, per request the ledger took
    (once, on the exporter's clock), its end, model, mean inter-token latency (decode time /
    (output tokens - 1)) with its token gaps as weight, and for image and video requests the
    generation latency; for `hold_s` seconds, and of at most `SEEN_PER_PENDING` x the ledger's
    `max_pending` requests (the oldest go first)."""

    def __init__(self, ledger: Ledger, hold_s: float, clock: Callable[[], float] = time.time):
        self.ledger = ledger
        self.hold_s = hold_s
        self._clock = clock
        self._lock = threading.Lock()
        self._chunks: collections.deque = collections.deque()  # (latest end, columns)
        self._rows = 0

    @property
    def full(self) -> bool:
        return self.ledger.full

    def submit(self, batch: RequestBatch) -> None:
        rows = self.ledger.submit(batch)  # raises IntakeFull: nothing kept
        if not len(rows):
            return
        gaps = rows["completion_tokens"] - 1
        text = (rows["output_kind"] == 0) & np.isfinite(rows["decode_s"]) & (gaps >= 1)
        columns = {
            "end": rows["end"].copy(),
            "model": np.asarray(batch.models, dtype=object)[rows["model"]],
            "itl": np.where(text, rows["decode_s"] / np.maximum(gaps, 1), np.nan),
            "gaps": np.where(text, gaps, 0),
            "generation": np.where(rows["output_kind"] != 0, rows["end"] - rows["start"], np.nan),
        }
        with self._lock:
            self._chunks.append((float(rows["end"].max()), columns))
            self._rows += len(rows)
            cutoff = self._clock() - self.hold_s
            cap = SEEN_PER_PENDING * self.ledger.max_pending
            while self._chunks and (self._chunks[0][0] < cutoff or self._rows > cap):
                self._rows -= len(self._chunks.popleft()[1]["end"])

    def window(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """Latency (ms) by basis, per model, of the requests that ended in (start, end]."""
        with self._lock:
            chunks = [c for t, c in self._chunks if t > start]
        if not chunks:
            return {}
        col = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        inside = (col["end"] > start) & (col["end"] <= end)
        out = {}
        for model in set(col["model"][inside]):
            sel = inside & (col["model"] == model)
            itl, gaps, gen = col["itl"][sel], col["gaps"][sel], col["generation"][sel]
            lat = {}
            text = np.isfinite(itl)
            if text.any():
                lat["median_itl"] = 1000 * weighted_median(itl[text], gaps[text])
                lat["p99_tpot"] = 1000 * float(np.percentile(itl[text], 99))
            if np.isfinite(gen).any():
                lat["generation_latency"] = 1000 * float(np.median(gen[np.isfinite(gen)]))
            out[str(model)] = lat
        return out


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below which half the total weight lies."""
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


# -- the exporter's history ------------------------------------------------------------------
class LimitLog:
    """When the GPUs' common enforced power limit changed (None: unknown, or the GPUs differ), as
    read from the samplers every POLL_S."""

    def __init__(self, samplers: Sequence[GPUSampler], size: int = 10_000):
        self.samplers = samplers
        self.changes: collections.deque = collections.deque(maxlen=size)  # (t, limit)
        self.polled = float("-inf")
        # a reading can lag a change by the sampler's status period plus our poll
        self.lag_s = POLL_S + max((s.status_interval_s for s in samplers), default=1.0)

    def poll(self, now: float) -> None:
        limits = set()
        for s in self.samplers:
            with s.lock:
                limits.add(s.status.power_limit_w if s.healthy else None)
        limit = limits.pop() if len(limits) == 1 else None
        if not self.changes or self.changes[-1][1] != limit:
            self.changes.append((now, limit))
        self.polled = now

    def during(self, start: float, end: float) -> float | None:
        """The limit in force from `start` to `end`, if it held throughout and is known."""
        if self.polled < end + self.lag_s:
            return None
        before = [limit for t, limit in self.changes if t <= start - self.lag_s]
        if not before or any(start - self.lag_s < t <= end + self.lag_s for t, _ in self.changes):
            return None
        return before[-1]


@dataclasses.dataclass(frozen=True)
class Observation:
    start: float
    end: float
    power_limit_w: float
    points: list[OperatingPoint]  # one per model that produced output


class History:
    """Operating points of the live deployment: per window of the ledger (`--window`), one point
    per model that produced output, with the limit that held over the whole window."""

    def __init__(self, samplers: Sequence[GPUSampler], ledger: Ledger, spans: SpanLatency,
                 size: int = HISTORY_WINDOWS):
        self.samplers = samplers
        self.ledger = ledger
        self.spans = spans
        self.limits = LimitLog(samplers)
        self.points: collections.deque[OperatingPoint] = collections.deque(maxlen=size)
        self.last_end = float("-inf")

    def observe(self) -> Observation | None:
        """The window just completed; None until the previous one has passed (the ledger's window
        slides by its attribution passes, ~1 s), while the window is shorter than half the
        ledger's, or when the limit changed in it or the GPUs' limits differ."""
        ends = [t.finalized_until for t, s in zip(self.ledger.gpus, self.samplers)
                if s.healthy and t.finalized_until is not None]
        if not ends or min(ends) - self.last_end < self.ledger.window_s / 2:
            return None
        end, stats = min(ends), self.ledger.window()
        if not stats:
            return None
        seconds = next(iter(stats.values())).seconds
        start = end - seconds
        if seconds < self.ledger.window_s / 2 or start < self.last_end - PASS_S:
            return None
        limit = self.limits.during(start, end)
        if limit is None:
            return None
        self.last_end = end
        latency = self.spans.window(start, end)
        observed = []
        for model, ws in stats.items():
            items = ws.images + ws.videos
            if ws.output_tokens > 0:
                energy, rate = ws.joules_per_output_token, ws.output_tokens / seconds
            elif items:
                energy, rate = (ws.image_energy_j + ws.video_energy_j) / items, items / seconds
            else:
                continue
            observed.append(OperatingPoint(model, limit, energy, rate, ws.measured_j / seconds / ws.gpus,
                                           latency.get(model, {}), ws.gpus, time=end))
        self.points.extend(observed)
        return Observation(start, end, limit, observed)


def power_percentile(sampler: GPUSampler, window_s: float, q: float = HEADROOM_PERCENTILE) -> float | None:
    """The `q`th percentile of the GPU's power (W) over the last `window_s` seconds of its settled
    timeline, at the power sampling resolution; None with less than a second of timeline."""
    with sampler.lock:
        tl = sampler.timeline
        if not tl.started:
            return None
        end = tl.settled_until
        start = max(tl.oldest, end - window_s)
        if end - start < 1.0:
            return None
        grid = np.arange(start, end, sampler.power_interval_s)
        energy = tl.energy_at(np.append(grid, end))
    return float(np.percentile(np.diff(energy) / np.diff(np.append(grid, end)), q))


# -- the exporter's side ---------------------------------------------------------------------
class PowerCap:
    """Advice, headroom and (when enabled) actuation for one exporter.

    Wiring: the span intake's sink is `sink` (it passes every batch to the ledger); `run(stop)`
    runs on a thread of its own; `add_routes(app)` adds `/api/v1/powercap` to the metrics server;
    `restore()` at stop puts back the limits the GPUs had before actuation changed them."""

    def __init__(self, cfg: PowerCapConfig, samplers: Sequence[GPUSampler], ledger: Ledger,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.samplers = list(samplers)
        self.ledger = ledger
        self._clock = clock
        self.sink = SpanLatency(ledger, ledger.settle_delay_s + 3 * ledger.window_s, clock)
        self.history = History(self.samplers, ledger, self.sink)
        self.actuator = self.tokens = None
        if cfg.actuation:
            self.actuator = actuation.Actuator([s.device for s in self.samplers], cfg.policy(),
                                               actuation.AuditLog(cfg.audit_log), clock)
            self.tokens = actuation.Tokens(cfg.token_file)
            self.tokens.check()
        self.errors = 0

    def advice(self) -> list[ModelAdvice]:
        return advise(list(self.history.points), self.cfg.deadlines, self.cfg.budget_w, len(self.samplers))

    def step(self) -> None:
        """Read the limits in force; at each window's end observe it and let the guard see it."""
        self.history.limits.poll(self._clock())
        window = self.history.observe()
        if window is not None and self.actuator is not None:
            self.actuator.observe_window(window.start, window.power_limit_w,
                                         {p.model: p.latency_ms for p in window.points})

    def run(self, stop: threading.Event) -> None:
        """`step` every POLL_S until `stop` is set."""
        while not stop.wait(POLL_S):
            try:
                self.step()
            except Exception:  # never let one bad step stop the advice or the guard
                self.errors += 1
                log.exception("power-cap step failed")

    def restore(self) -> None:
        """Put back the limits the GPUs had before actuation changed them (at the exporter's stop)."""
        if self.actuator is not None:
            try:
                self.actuator.restore("jouletrace", "exporter stopping")
            except actuation.Refused as exc:
                log.error("power limits not all restored: %s", exc.reason)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/powercap", self._state)
        post, delete = actuation.handlers(self.actuator, self.tokens)
        app.router.add_post("/api/v1/powercap", post)
        app.router.add_delete("/api/v1/powercap", delete)

    async def _state(self, request: web.Request) -> web.Response:
        gpus = []
        for s in self.samplers:
            with s.lock:
                limit = s.status.power_limit_w
            gpus.append({"index": s.device.index, "uuid": s.device.uuid, "limit_w": limit})
        body = {"actuation": self.actuator is not None, "gpus": gpus,
                "advice": [a.to_dict() for a in self.advice()]}
        if self.actuator is not None:
            body.update(await asyncio.to_thread(self.actuator.state))
        return web.json_response(body)
