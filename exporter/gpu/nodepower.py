"""The node's power on a common 100 ms grid: the sum of all the exporter's GPUs, what a rack PDU
sees from this server's GPUs, with its windowed peak and its histogram.

Where it is computed: from the GPUs' energy timelines, at scrape time (`update()`, called by the
collector), not on the samplers' threads. Each sampler's power samples are taken at its own phase;
its timeline turns them, once settled to the energy counter, into cumulative joules at every sample
time. The node's power over grid interval k, [k*dt, (k+1)*dt] in Unix seconds (dt the power
interval, 0.1 s), is the sum over GPUs of E(t_{k+1}) - E(t_k), divided by dt: the mean power of each
100 ms interval, exactly additive over GPUs and, the grid being the same for every node with a
synchronised clock, over nodes. So `_sum * dt` of the histogram is the node's energy over the
intervals counted, in step with jouletrace_gpu_energy_joules_total. Each update reads only what
settled since the last one (about a scrape interval of numpy interpolation per GPU, no device read).

The grid reaches the latest interval that every answering GPU has settled (the energy counter
period behind now, 5 s by default). A GPU that does not answer counts 0 W past its last settled
reading, and before its timeline started, so the node keeps up with the GPUs that answer; while none
answers, the node has no peak. Intervals older than every answering GPU's retention when an update
comes are not counted.

The peak is the greatest interval of those ending in (end - window_s, end], `end` the grid's end.
Histogram buckets (W) are fractions BUCKET_FRACTIONS of the node's nameplate, the sum of its GPUs'
highest accepted power limits, read once at start.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np

from jouletrace.exporter.gpu.device import GPUError
from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.windowed import WindowedExtreme

log = logging.getLogger(__name__)

BUCKET_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05)
FALLBACK_MAX_LIMIT_W = 1000.0  # a GPU whose highest power limit cannot be read counts this in the nameplate


def nameplate_w(samplers: list[GPUSampler]) -> float:
    """The sum of the GPUs' highest accepted power limits (W); FALLBACK_MAX_LIMIT_W for a GPU that cannot say."""
    total = 0.0
    for s in samplers:
        try:
            total += s.device.power_limit_constraints_w()[1]
        except GPUError as exc:
            log.warning("GPU %s: highest power limit unknown (%s): the node power histogram counts %g W for it",
                        s.gpu_label, exc, FALLBACK_MAX_LIMIT_W)
            total += FALLBACK_MAX_LIMIT_W
    return total


class NodePower:
    """The node's 100 ms power: `update()` counts the intervals settled since the last call."""

    def __init__(self, samplers: list[GPUSampler], interval_s: float = 0.1, window_s: float = 30.0):
        self.samplers = samplers
        self.interval_s = interval_s
        self.nameplate_w = nameplate_w(samplers)
        self.bounds = tuple(round(f * self.nameplate_w, 3) for f in BUCKET_FRACTIONS)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # per bucket, the last above every bound
        self.sum_w = 0.0
        self.peak = WindowedExtreme(window_s)
        self.end: float | None = None  # the grid's end: intervals before it are counted
        self.answering = False  # whether a GPU answered at the last update
        self._next_k: int | None = None  # the next interval to count
        self._lock = threading.Lock()

    def update(self) -> None:
        """Count every interval settled by all the answering GPUs since the last update."""
        with self._lock:
            spans = []
            for s in self.samplers:
                with s.lock:
                    if s.timeline.started:
                        spans.append((s, s.healthy, s.timeline.origin, s.timeline.oldest, s.timeline.settled_until))
            answering = [span for span in spans if span[1]]
            self.answering = bool(answering)
            if not answering:
                return
            dt = self.interval_s
            if self._next_k is None:
                self._next_k = math.ceil(max(span[2] for span in spans) / dt)
            first = max(self._next_k, math.ceil(min(span[3] for span in answering) / dt))
            last = math.floor(min(span[4] for span in answering) / dt) - 1
            if last < first:
                return
            edges = np.arange(first, last + 2) * dt
            energy = np.zeros(len(edges))
            for s, *_ in spans:
                with s.lock:
                    tl = s.timeline
                    energy += tl.energy_at(np.clip(edges, tl.oldest, tl.settled_until))
            power = np.diff(energy) / dt
            self.counts += np.bincount(np.searchsorted(self.bounds, power, side="left"), minlength=len(self.counts))
            self.sum_w += float(power.sum())
            recent = max(0, len(power) - math.ceil(self.peak.window_s / dt))
            for t, p in zip(edges[recent + 1:], power[recent:]):
                self.peak.add(float(t), float(p))
            self._next_k = last + 1
            self.end = float(edges[-1])

    def peak_w(self) -> float | None:
        """The greatest interval power (W) of the window ending at the grid's end; None before any, and
        while no GPU answers."""
        with self._lock:
            return self.peak.value(self.end) if self.end is not None and self.answering else None

    def histogram(self) -> tuple[tuple[float, ...], list[int], float]:
        """(bucket bounds W, count per bucket then one above them all, sum of the interval powers W)."""
        with self._lock:
            return self.bounds, self.counts.tolist(), self.sum_w
