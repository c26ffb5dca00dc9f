"""Samples one GPU on its own thread: cheap power often, the costly energy counter rarely.

Every `power_interval_s` (100 ms) the power is read into the GPU's timeline and its windowed peak
(`peak`: the greatest sample of the last `peak_window_s`, O(1) amortised per sample); every
`counter_interval_s` the energy counter is read and its delta settles the timeline, so the
timeline's totals equal the counter while its resolution is the power samples'. A GPU without the
counter settles with the power integral instead (method "power_integral"); one without power
readings spreads each counter delta evenly over its interval.

A counter reading that goes back (driver reload) or jumps implausibly is rejected and counted, and
the power integral stands in for that interval. The next reading is taken against the last
accepted one where that is plausible (the rejected one was a glitch: the counter's energy since
the last accepted reading, less what the power integral already settled, settles this interval,
so the totals equal the counter again), else against the rejected one (the counter restarted or
stepped there). Status (cheap readings) errors are counted but do not stop the energy sampling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from jouletrace.exporter.gpu.device import GPUDevice, GPUError, GPUStatus, NotSupported
from jouletrace.exporter.gpu.timeline import EnergyTimeline
from jouletrace.exporter.windowed import WindowedExtreme

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
        peak_window_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ):
        self.device = device
        self.timeline = EnergyTimeline(retention_s)
        self.peak = WindowedExtreme(peak_window_s)  # power samples (W) by their time
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
        self.has_power = True  # False once the device says it has no power reading
        self._last_counter_mj: int | None = None  # the last counter reading (mJ), accepted or not
        self._accepted: tuple[int, float, float] | None = None  # last accepted: (mJ, time, timeline total J)
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
        if self.has_power:
            self._sample_power(now)
        if now >= self._next_status:
            self._next_status = now + self.status_interval_s
            try:
                status = self.device.status()
            except GPUError as exc:  # unknown until the next status read; energy carries on
                self.errors[(exc.call, exc.code)] += 1
                status = GPUStatus()
            with self.lock:
                self.status = status
        if now >= self._next_counter:
            self._settle()
            self._next_counter = now + self.counter_interval_s

    def _sample_power(self, now: float) -> None:
        try:
            power, t_power = self.device.power_w()
        except NotSupported:
            if self.method == POWER_INTEGRAL:
                raise  # neither counter nor power: nothing to measure
            log.warning("GPU %s has no power reading: each counter delta is spread evenly over its interval",
                        self.gpu_label)
            self.has_power = False
            return
        t_power = _when(t_power, now, self._clock())
        with self.lock:
            self.timeline.add_power(t_power, power)
            self.peak.add(t_power, power)
            self.power_w = power
            self.last_sample_time = t_power

    def _settle(self) -> None:
        """Read the counter (or fall back to the power integral) and settle the timeline."""
        counter_mj = None
        if self.method == COUNTER:
            t0 = self._clock()
            t_device = None
            try:
                counter_mj, t_device = self.device.energy_mj()
            except NotSupported:
                if not self.has_power:
                    raise  # neither counter nor power: nothing to measure
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
                if counter_mj is not None:
                    self._accepted = (counter_mj, t, 0.0)
                return
            if t <= tl.settled_until:
                return
            energy_j = None if counter_mj is None else self._counter_energy(counter_mj, t)
            tl.settle(t, tl.pending_integral(t) if energy_j is None else energy_j)
            self._last_counter_mj = counter_mj
            if energy_j is not None:
                self._accepted = (counter_mj, t, tl.total_j)

    def _counter_energy(self, counter_mj: int, t: float) -> float | None:
        """The energy (J) the counter gives from the last settlement to `t`, or None where the
        reading is rejected (counted as a reset when it went back, else as a jump)."""
        tl = self.timeline
        base_mj, base_t, base_total_j = self._accepted
        if self._plausible(counter_mj - base_mj, t - base_t):
            # past a rejected reading, the power integral settled part of this delta already
            return max(0.0, (counter_mj - base_mj) / 1000.0 - (tl.total_j - base_total_j))
        delta_mj = counter_mj - self._last_counter_mj
        if self._plausible(delta_mj, t - tl.settled_until):
            return delta_mj / 1000.0  # the counter restarted or stepped at the last reading
        if delta_mj < 0:
            self.counter_resets += 1
            log.warning("GPU %s energy counter went back by %d mJ (reset): interval integrated from power",
                        self.gpu_label, -delta_mj)
        else:
            self.counter_rejected += 1
            log.warning("GPU %s energy counter jumped by %.0f J in %.1f s: rejected, power integrated",
                        self.gpu_label, delta_mj / 1000.0, t - tl.settled_until)
        return None

    def _plausible(self, delta_mj: int, seconds: float) -> bool:
        """Whether a counter delta of `delta_mj` over `seconds` is physically possible."""
        return 0 <= delta_mj <= (self.max_plausible_w * seconds + 1.0) * 1000.0

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
