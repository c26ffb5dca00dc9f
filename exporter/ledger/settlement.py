"""Settlement: up to when the GPUs' energy may be split now, and why.

A request's span arrives only when it ends, so a moment's energy may be split (finalized) only
once every request that ran then is known. `Settlement.horizon` answers, each pass, the latest
moment that may be split, under one of three policies (`reason`):

- `fixed` (`--settle-delay` given): now - settle delay.
- `engine` (every scraped engine answers, `--engine-metrics`): each scrape records its moment (the
  middle of the request to the engine and its answer) and how many requests the engine was running
  per model. A scrape moment is covered once the spans of that model whose GPU phases run at that
  moment number at least that many. Its deficit (running - spans) may also be requests that will
  never send a span (aborted, sampled out) or a reading on a request's edge: a request still on its
  way is missing at every later moment too, until it ends and its span arrives within the export
  delay. So a moment is also covered once some later moment, older than the export delay +
  SETTLED_MARGIN_S, has no deficit for the same model and none between them is smaller. The horizon
  is the last covered scrape moment followed by covered scrapes for GAUGE_LAG_S (a request is in
  the gauges only once the engine has published its step), among those answered at least
  the span export delay ago (the greatest arrival - end of recent spans, any sender;
  `clockskew.py`): a request that ended before a scrape read the engine's gauges (one that started
  and ended between two scrapes included) is in no gauge, and its span is in once the scrape's
  answer is that old. A long request thus holds its own time and every later moment until its
  span arrives; when nothing is in flight the lag from a request's end to its energy is the export
  delay, GAUGE_LAG_S, the next scrape and a pass. A model that no span names, once
  the engine finished UNTRACED_AFTER of its requests, holds nothing (its requests are not traced).
  An engine that has not answered yet (the exporter just started, or the engine did) holds all
  time not yet split for up to STALE_S: requests may already run on it.
- `adaptive` (no engine scrape, or one that is down, stale or restarted): now - ADAPTIVE_MARGIN x
  the greatest (arrival - start) of recent spans (any sender), within [ADAPTIVE_FLOOR_S, max hold].
  When an engine's first scrape (at start, after a restart or an outage) finds requests running,
  their start is unknown: all time not yet split waits for their spans.

Bounds. No moment is held more than `max_hold_s`; an uncovered scrape moment older than that is
given up (its request's span never came: lost, or the engine restarted unseen) and the run of
them counted once in `holds_expired`. While the ledger is nearly full (`pressure`), holds end at
the export delay instead, so that pending requests can be dropped and senders are not refused
forever. An engine that answers nothing for STALE_S (a single failed scrape changes nothing) or whose request counter
goes back (a restart: requests it ran then never end) drops its scrape moments, falls back to
the adaptive delay and is counted in `fallbacks` by reason.

Thread safety: `engine_sample` is called from the engine scrape's event loop, `horizon` and
`observe_lag` from the ledger's pass under the ledger's lock; the scrape moments have a lock of
their own. Times are Unix seconds on the exporter's clock.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from jouletrace.exporter.ledger.clockskew import ClockSkew

FIXED, ENGINE, ADAPTIVE = "fixed", "engine", "adaptive"
ADAPTIVE_FLOOR_S = 5.0
ADAPTIVE_MARGIN = 1.25
#: Export delay assumed before any span arrived: the OpenTelemetry batch processor's schedule delay.
DEFAULT_EXPORT_DELAY_S = 5.0
# A deficit that later scrapes no longer show is a request that will never report only once those
# scrapes are this much older than the export delay: on a busy host spans come seconds late.
SETTLED_MARGIN_S = 10.0
STALE_S = 30.0  # an engine with no answer for this long counts as down
#: How far an engine's gauges may lag its scheduler: vLLM publishes them as it processes each
#: step's outputs, a step or more late on a busy host.
GAUGE_LAG_S = 2.0
UNTRACED_AFTER = 10
#: Request end -> energy final histogram bucket upper bounds (s).
LAG_BUCKETS_S = np.array([0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600])
FALLBACK_REASONS = ("engine_down", "engine_restart")

#: covering(model, moments): how many of the model's spans run at each moment; None when no span
#: has named the model.
Covering = Callable[[str, np.ndarray], "np.ndarray | None"]


@dataclass(slots=True)
class Figures:
    """Settlement's state as exported: hold per GPU index (s), reason, lag histogram (per bucket of
    LAG_BUCKETS_S then +Inf, not cumulative; sum in s), holds given up, fallbacks by reason."""

    holds: dict[int, float]
    reason: str
    lag_counts: list[int]
    lag_sum: float
    holds_expired: int
    fallbacks: dict[str, int]


@dataclass(slots=True)
class _Engine:
    """One engine's scrape moments not yet settled: (sent, answered, {model: requests running})."""

    samples: collections.deque = field(default_factory=collections.deque)
    anchor: float | None = None  # the last covered scrape moment, where its horizon stands
    up: bool = False
    last_answer: float = float("-inf")
    succeeded: dict[str, float] = field(default_factory=dict)  # model -> request counter, last
    first_succeeded: dict[str, float] = field(default_factory=dict)  # model -> request counter, first seen
    expiring: bool = False  # the last scrape moment handled was given up
    watched_since: float | None = None  # the first pass that followed it, while it never answered

    def reset(self) -> None:
        self.samples.clear()
        self.anchor = None
        self.succeeded.clear()
        self.first_succeeded.clear()


class Settlement:
    """The settle horizon, its reason, and the lag and hold figures exported about it."""

    def __init__(self, settle_delay_s: float | None, max_hold_s: float):
        self.fixed_s = settle_delay_s
        self.max_hold_s = settle_delay_s if settle_delay_s is not None else max_hold_s
        self._lock = threading.Lock()
        self._engines: dict[str, _Engine] = {}
        self.reason = FIXED if settle_delay_s is not None else ADAPTIVE
        self.holds: dict[int, float] = {}  # GPU index -> hold at the last pass (s)
        self.holds_expired = 0
        self.fallbacks = collections.Counter({r: 0 for r in FALLBACK_REASONS})
        self.lag_counts = np.zeros(len(LAG_BUCKETS_S) + 1, dtype=np.int64)  # not cumulative
        self.lag_sum = 0.0

    def describe(self) -> str:
        """The policy in force, in words (logged at start)."""
        if self.fixed_s is not None:
            return f"fixed: energy is split {self.fixed_s:g} s after it is measured (--settle-delay)"
        if self._engines:
            return (f"engine: energy waits for the requests {len(self._engines)} engine(s) run, at most "
                    f"{self.max_hold_s:g} s (--max-hold); adaptive while an engine does not answer")
        return (f"adaptive: no engine scrape (--engine-metrics), energy waits {ADAPTIVE_MARGIN:g} x the age of "
                f"recent spans, {ADAPTIVE_FLOOR_S:g} s to {self.max_hold_s:g} s")

    # -- engine scrape --------------------------------------------------------------------
    def watch(self, urls: list[str]) -> None:
        """The engines scraped from now on: others are forgotten; a new one holds all time not yet split
        until it answers, for STALE_S at most."""
        with self._lock:
            self._engines = {url: self._engines.get(url) or _Engine() for url in urls}

    def engine_sample(self, url: str, sent: float, answered: float,
                      values: dict[str, dict[str, float]] | None) -> None:
        """One scrape of engine `url`, sent and answered at these times: per model its series
        (`requests_running`, `requests_succeeded`), or None when it failed."""
        if self.fixed_s is not None:
            return
        with self._lock:
            e = self._engines.get(url)
            if e is None:
                return
            if values is None:  # one failed scrape (a busy host) holds what is held; STALE_S of them let go
                if e.up and e.last_answer < answered - STALE_S:
                    self.fallbacks["engine_down"] += 1
                    e.up = False
                    e.reset()
                return
            restarted = any(values.get(m, {}).get("requests_succeeded", n) < n for m, n in e.succeeded.items())
            if restarted:
                self.fallbacks["engine_restart"] += 1
                e.reset()
            e.up, e.last_answer = True, answered
            for model, series in values.items():
                if "requests_succeeded" in series:
                    e.succeeded[model] = series["requests_succeeded"]
                    e.first_succeeded.setdefault(model, series["requests_succeeded"])
            running = {m: s["requests_running"] for m, s in values.items() if s.get("requests_running", 0) > 0}
            e.samples.append((sent, answered, running))

    # -- the horizon ----------------------------------------------------------------------
    def horizon(self, now: float, skew: ClockSkew, covering: Covering, pressure: bool = False) -> float:
        """The latest moment whose energy may be split now; sets `reason`."""
        if self.fixed_s is not None:
            return now - self.fixed_s
        delay = min(max(skew.export_delay() or DEFAULT_EXPORT_DELAY_S, 0.0), self.max_hold_s)
        age = skew.age()
        adaptive = now - min(max(ADAPTIVE_MARGIN * age if age is not None else 0.0, ADAPTIVE_FLOOR_S), self.max_hold_s)
        limit = now - (delay if pressure else self.max_hold_s)
        settled = now - delay - SETTLED_MARGIN_S  # the spans of requests that ended before this have arrived
        with self._lock:
            for e in self._engines.values():
                if e.up and e.last_answer < now - STALE_S:
                    self.fallbacks["engine_down"] += 1
                    e.up = False
                    e.reset()
            engines = list(self._engines.values())
            if any([self._first_answer_due(e, now) for e in engines]):  # each engine's wait starts now
                self.reason = ENGINE
                return limit
            if not engines or not all(e.up for e in engines):
                self.reason = ADAPTIVE
                return max(adaptive, limit) if pressure else adaptive
            self.reason = ENGINE
            h = now - delay
            for e in engines:
                h = min(h, self._engine_horizon(e, covering, limit, adaptive, settled, now - delay))
            return h

    def _first_answer_due(self, e: _Engine, now: float) -> bool:
        """Whether `e` never answered and may still: watched for less than STALE_S (then counted down)."""
        if e.last_answer > float("-inf"):
            return False
        if e.watched_since is None:
            e.watched_since = now
        if now - e.watched_since < STALE_S:
            return True
        if e.watched_since > float("-inf"):
            self.fallbacks["engine_down"] += 1
            e.watched_since = float("-inf")  # given up: counted once
        return False

    def _engine_horizon(self, e: _Engine, covering: Covering, limit: float, adaptive: float, settled: float,
                        arrived: float) -> float:
        """Where engine `e`'s scrape moments let the horizon go; drops the moments passed. The spans of
        requests that ended before `arrived` are in."""
        samples = e.samples
        while samples and samples[0][1] < limit:  # held too long: given up
            samples.popleft()
            if not e.expiring:
                self.holds_expired += 1
            e.expiring = True
            e.anchor = None
        if not samples:
            return max(adaptive if e.anchor is None else e.anchor, limit)
        covered = np.ones(len(samples), bool)
        sent = np.fromiter((s[0] for s in samples), float, len(samples))
        answered = np.fromiter((s[1] for s in samples), float, len(samples))
        moment = (sent + answered) / 2
        old = int(np.searchsorted(answered, settled))  # moments whose requests' spans had time to arrive
        for model in {m for s in samples for m in s[2]}:
            need = np.fromiter((s[2].get(model, 0) for s in samples), float, len(samples))
            have = covering(model, moment)
            if have is None:
                if e.succeeded.get(model, 0) - e.first_succeeded.get(model, 0) >= UNTRACED_AFTER:
                    continue  # the engine finished many of them, and no span came: not traced
                have = np.zeros(len(samples))
            deficit = need - have
            # a request on its way is missing from every later moment until it ends: the least
            # deficit from a moment to the last old one bounds how many of its requests can still come
            deficit[:old] = np.minimum.accumulate(deficit[:old][::-1])[::-1]
            covered &= deficit <= 0
        u = int(np.argmin(covered)) if not covered.all() else len(samples)
        # a request that ended before a scrape read its gauges is in no gauge: wait for its span
        u = min(u, int(np.searchsorted(answered, arrived, "right")))
        # the gauges lag the engine: a moment stands once the covered scrapes go GAUGE_LAG_S past it
        k = int(np.searchsorted(sent[:u], sent[u - 1] - GAUGE_LAG_S, "right")) - 1 if u else -1
        if k >= 0:
            e.anchor = sent[k]
            e.expiring = False
            for _ in range(k):
                samples.popleft()  # keep the anchor's scrape: the requests after it are counted from it
        # None: the first scrape found requests running, started when is unknown: all time unsplit waits
        return limit if e.anchor is None else max(e.anchor, limit)

    # -- figures --------------------------------------------------------------------------
    def figures(self) -> "Figures":
        """A copy of what is exported."""
        with self._lock:
            return Figures(dict(self.holds), self.reason, self.lag_counts.tolist(), self.lag_sum,
                           self.holds_expired, dict(self.fallbacks))

    def note_holds(self, now: float, horizons: dict[int, float]) -> None:
        """Each GPU's horizon at this pass (GPU index -> time)."""
        self.holds = {g: max(now - h, 0.0) for g, h in horizons.items()}

    def observe_lag(self, seconds: np.ndarray) -> None:
        """Requests whose energy just became final, `seconds` after they ended."""
        self.lag_counts += np.bincount(np.searchsorted(LAG_BUCKETS_S, seconds), minlength=len(self.lag_counts))
        self.lag_sum += float(seconds.sum())
