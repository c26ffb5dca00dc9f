"""Samples one GPU on its own thread: cheap power often, the costly energy counter rarely.

Every `power_interval_s` (100 ms) the power is read into the GPU's timeline; every
`counter_interval_s` the energy counter is read and its delta settles the timeline, so the
timeline's totals equal the counter while its resolution is the power samples'. A GPU without the
counter settles with the power integral instead (method "power_integral"). Counter resets and
implausible jumps are rejected and counted; the power integral stands in for that interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from .gpu import GPUDevice, GPUError, GPUStatus, NotSupported
from .timeline import EnergyTimeline

log = logging.getLogger(__name__)

COUNTER = "counter"
POWER_INTEGRAL = "power_integral"


class GPUSampler:
    """Owns one device and its timeline. `step()` does one iteration; `run()` loops on a thread."""

    def __init__(
        self,
        device: GPUDevice,
        *,
        retention_s: float = 600.0,
        power_interval_s: float = 0.1,
        counter_interval_s: float = 5.0,
        status_interval_s: float = 1.0,
        max_plausible_w: float = 2000.0,
        clock: Callable[[], float] = time.time,
    ):
        self.device = device
        self.timeline = EnergyTimeline(retention_s)
        self.power_interval_s = power_interval_s
        self.counter_interval_s = counter_interval_s
        self.status_interval_s = status_interval_s
        self.max_plausible_w = max_plausible_w
        self._clock = clock
        self.lock = threading.Lock()  # guards the timeline and the readings below
        # readings and health, read at scrape time
        self.method: str = COUNTER
        self.healthy = False
        self.power_w: float | None = None
        self.status = GPUStatus()
        self.last_sample_time: float | None = None
        self.errors: Counter[tuple[str, str]] = Counter()  # (call, code) -> count
        self.counter_resets = 0
        self.counter_rejected = 0
        self.cpu_seconds = 0.0
        self.counter_reads = 0
        self._last_counter_mj: int | None = None
        self._next_counter = float("-inf")
        self._next_status = float("-inf")
        self._down_since: float | None = None

    @property
    def gpu_label(self) -> str:
        return str(self.device.index)

    # -- one iteration ----------------------------------------------------------------------
    def step(self) -> None:
        cpu0 = time.thread_time()
        try:
            if not self.healthy and self._down_since is not None:
                self.device.reopen()
            self._sample()
            if self._down_since is not None:
                log.info("GPU %s (%s) answers again", self.gpu_label, self.device.uuid)
            self.healthy = True
            self._down_since = None
        except GPUError as exc:
            self.errors[(exc.call, exc.code)] += 1
            if self.healthy or self._down_since is None:
                log.error("GPU %s (%s) unhealthy: %s", self.gpu_label, self.device.uuid, exc)
                self._down_since = self._clock()
            self.healthy = False
        finally:
            self.cpu_seconds += time.thread_time() - cpu0

    def _sample(self) -> None:
        now = self._clock()
        power, t_power = self.device.power_w()
        t_power = _when(t_power, now, self._clock())
        with self.lock:
            self.timeline.add_power(t_power, power)
            self.power_w = power
            self.last_sample_time = t_power
        if now >= self._next_status:
            status = self.device.status()
            with self.lock:
                self.status = status
            self._next_status = now + self.status_interval_s
        if now >= self._next_counter:
            self._settle()
            self._next_counter = now + self.counter_interval_s

    def _settle(self) -> None:
        """Read the counter (or fall back to the power integral) and settle the timeline."""
        counter_mj = None
        if self.method == COUNTER:
            t0 = self._clock()
            t_device = None
            try:
                counter_mj, t_device = self.device.energy_mj()
            except NotSupported:
                log.warning("GPU %s has no energy counter: integrating power instead", self.gpu_label)
                self.method = POWER_INTEGRAL
            t = _when(t_device, t0, self._clock())
            self.counter_reads += 1
        else:
            t = self._clock()
        with self.lock:
            tl = self.timeline
            if not tl.started:
                tl.start(t)
                self._last_counter_mj = counter_mj
                return
            if t <= tl.settled_until:
                return
            energy_j = tl.pending_integral(t)
            if counter_mj is not None and self._last_counter_mj is not None:
                delta_mj = counter_mj - self._last_counter_mj
                plausible_j = self.max_plausible_w * (t - tl.settled_until) + 1.0
                if delta_mj < 0:
                    self.counter_resets += 1
                    log.warning("GPU %s energy counter went back by %d mJ (reset): interval integrated from power",
                                self.gpu_label, -delta_mj)
                elif delta_mj / 1000.0 > plausible_j:
                    self.counter_rejected += 1
                    log.warning("GPU %s energy counter jumped by %.0f J in %.1f s: rejected, power integrated",
                                self.gpu_label, delta_mj / 1000.0, t - tl.settled_until)
                else:
                    energy_j = delta_mj / 1000.0
            self._last_counter_mj = counter_mj
            tl.settle(t, energy_j)

    def read_counter_soon(self) -> None:
        """Read the energy counter at the next step (within one power interval), not at its period."""
        self._next_counter = 0.0

    # -- the thread -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Sample every `power_interval_s` until `stop` is set; errors back off to 1 s."""
        next_at = time.monotonic()
        while not stop.is_set():
            self.step()
            interval = self.power_interval_s if self.healthy else max(1.0, self.power_interval_s)
            next_at = max(next_at + interval, time.monotonic())
            stop.wait(next_at - time.monotonic())


def _when(t_device: float | None, t_before: float, t_after: float) -> float:
    """When a value was measured: the device's own timestamp where it gives a plausible one (the
    driver refreshes values about every 100 ms, so a value can be that much older than the read),
    else the midpoint of the read."""
    if t_device is not None and t_before - 1.0 <= t_device <= t_after:
        return t_device
    return (t_before + t_after) / 2
