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
recommended limit is the least J/token whose latency meets it (`jouletrace.planning`, the
time-energy frontier's choice); it is compared with the highest limit observed in the same
configuration. With a power budget, the recommended limit is the one whose GPUs, counted at their
limit, give the most throughput within the deadline. Fewer than two distinct limits observed: no
advice, and the reason says so.

Headroom: a GPU's enforced limit minus the 99th percentile of its power over the window (power at
the timeline's resolution, 100 ms): what oversubscribing a power budget relies on.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from typing import Callable, Sequence

import numpy as np
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.ledger.ledger import SEEN_PER_PENDING, Ledger
from jouletrace.exporter.ledger.records import RequestBatch
from jouletrace.exporter.powercap import actuation
from jouletrace.planning import Deadline, ModelAdvice, OperatingPoint, advise

log = logging.getLogger(__name__)

HISTORY_WINDOWS = 1440  # observations kept: a day of 60 s windows
HEADROOM_PERCENTILE = 99.0
POLL_S = 1.0  # how often the limits in force are read
PASS_S = 1.0  # the ledger's attribution period: its window's granularity
GPU_LABELS = ["gpu", "uuid", "backend"]


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
    runs on a thread of its own; `collector` is registered with the exporter's registry;
    `add_routes(app)` adds `/api/v1/powercap` to the metrics server; `restore()` at stop puts back
    the limits the GPUs had before actuation changed them."""

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
        self.collector = PowerCapCollector(self)
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


class PowerCapCollector(Collector):
    """jouletrace_powercap_* and jouletrace_power_headroom_watts, rendered at scrape time."""

    def __init__(self, powercap: PowerCap):
        self.powercap = powercap

    def describe(self):
        return []

    def collect(self):
        pc = self.powercap
        advice = pc.advice()
        backend = ",".join(sorted({s.device.backend for s in pc.samplers}))
        lab = ["model", "deadline_ms", "basis", "backend"]
        recommended = GaugeMetricFamily("jouletrace_powercap_recommended_watts", "Power limit per GPU with the least "
                                        "energy per output within the latency deadline, from the observed windows.",
                                        labels=lab)
        budget = GaugeMetricFamily("jouletrace_powercap_budget_recommended_watts", "Power limit per GPU that serves "
                                   "the most within the deadline while the GPUs, counted at their limit, stay within "
                                   "--powercap-budget.", labels=lab)
        observed = GaugeMetricFamily("jouletrace_powercap_limits_observed", "Distinct power limits observed in the "
                                     "windows kept for advice.", labels=["model", "backend"])
        insufficient = GaugeMetricFamily("jouletrace_powercap_insufficient_data", "1 while there is not enough data "
                                         "to advise: no window observed yet, or fewer than 2 distinct power limits.",
                                         labels=["model", "reason", "backend"])
        if not advice:
            insufficient.add_metric(["", "no_windows", backend], 1.0)
        for a in advice:
            observed.add_metric([a.model, backend], len(a.limits_w))
            if a.insufficient:
                insufficient.add_metric([a.model, "too_few_limits", backend], 1.0)
            for family, recs in ((recommended, a.recommendations), (budget, a.budget)):
                for r in recs:
                    if r.point is not None:
                        family.add_metric([a.model, f"{r.deadline.ms:g}", r.deadline.basis, backend],
                                          r.point.power_limit_w)
        yield from (recommended, budget, observed, insufficient)
        headroom = GaugeMetricFamily("jouletrace_power_headroom_watts", "Enforced power limit minus the 99th "
                                     "percentile of power over the window.", labels=GPU_LABELS)
        for s in pc.samplers:
            p99 = power_percentile(s, pc.ledger.window_s)
            with s.lock:
                limit = s.status.power_limit_w
            if p99 is not None and limit is not None:
                headroom.add_metric([str(s.device.index), s.device.uuid, s.device.backend], limit - p99)
        yield headroom
        changes = CounterMetricFamily("jouletrace_powercap_changes", "Power-limit changes made by the exporter, "
                                      "by action: set (admin API), rollback (latency guard), restore.",
                                      labels=["action"])
        counts = pc.actuator.changes if pc.actuator is not None else {}
        for action in actuation.ACTIONS:
            changes.add_metric([action], counts.get(action, 0))
        yield changes
