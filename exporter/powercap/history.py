"""The live deployment's operating points, for the power-cap advice: every `--window` seconds,
each model's window figures (the ledger's J/token and tokens/s, the GPUs' average power per GPU)
with the power limit in force over the whole window and the latency of the requests that ended in
it (latency.py). Windows in which the limit changed, or the GPUs' limits differ, are not observed.
The last `HISTORY_WINDOWS` points are kept.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.ledger.ledger import SETTLE_PERIOD_S, Ledger
from jouletrace.exporter.powercap.latency import SpanLatency
from jouletrace.planning import OperatingPoint

HISTORY_WINDOWS = 1440  # observations kept: a day of 60 s windows
POLL_S = 1.0  # how often the limits in force are read


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
        if seconds < self.ledger.window_s / 2 or start < self.last_end - SETTLE_PERIOD_S:
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
