"""The simulated engine's GPUs: energy integrated from the power of each step, published to a
device file (exporter/gpu/devicefile.py) that the exporter reads as it reads NVML.

A reading is published when a step starts (with the step's power) and every 100 ms while idle,
so the energy counter lags by at most one step, as NVML's lags by up to 100 ms. The GPUs outlive
the engine, as real ones outlive vLLM: an engine that finds a device file of its GPU count goes on
with its counters (the time between engines counted at idle power) and its requested power limit."""

from __future__ import annotations

import os
import time
import uuid

from jouletrace.exporter.gpu.devicefile import (
    DeviceFile,
    DeviceFileError,
    Reading,
    SlotSpec,
)
from jouletrace.exporter.gpu.device import CLOCKS_EVENT_REASONS

from .engine import StepResult
from .perf import PerfModel
from .profiles import H100_SXM, LLAMA_3_1_8B, GPUProfile

SW_POWER_CAP = next(bit for bit, name in CLOCKS_EVENT_REASONS.items() if name == "sw_power_cap")


class SimulatedGPUs:
    """`perf.tp` identical GPUs; `path` (optional) is the device file to publish to."""

    def __init__(self, perf: PerfModel, memory_used_bytes: int, path: str | None, power_limit_w: float | None,
                 now: float):
        """`power_limit_w` None keeps the limit a previous engine left in the device file, else the maximum."""
        gpu = perf.gpu
        if power_limit_w is not None and not gpu.min_power_limit_w <= power_limit_w <= gpu.max_power_limit_w:
            raise ValueError(f"power limit {power_limit_w:g} W is outside {gpu.name}'s "
                             f"{gpu.min_power_limit_w:g}-{gpu.max_power_limit_w:g} W")
        self.perf, self.count, self.memory_used_bytes = perf, perf.tp, memory_used_bytes
        self.limit_w = gpu.max_power_limit_w if power_limit_w is None else power_limit_w
        self.energy_j = 0.0          # per GPU, since the GPUs appeared
        self.since = now
        self.file = self._attach(path, now) if path else None
        if self.file is not None:
            if power_limit_w is not None:
                for i in range(self.count):
                    self.file.request_power_limit(i, power_limit_w)
            self.limit_w = self.file.requested_power_limit(0)
        self.reading = Reading(now, self.energy_j, gpu.idle_w, self.limit_w, memory_used_bytes=memory_used_bytes)
        self._publish(self.reading)

    def _attach(self, path: str, now: float) -> DeviceFile:
        """The device file at `path` if it holds these GPUs (their energy so far is taken over), else a new one."""
        gpu = self.perf.gpu
        if os.path.exists(path):
            try:
                f = DeviceFile.open(path)
            except DeviceFileError:
                f = None
            if f is not None and f.count == self.count and f.slots[0].name == f"Simulated {gpu.name}":
                last = f.read(0)
                self.energy_j = last.energy_j + gpu.idle_w * max(0.0, now - last.time)
                return f
            if f is not None:
                f.close()
        instance = uuid.uuid4().hex
        slots = [SlotSpec(f"GPU-{instance[:8]}-{instance[8:12]}-{instance[12:16]}-{instance[16:20]}-{i:012x}",
                          f"Simulated {gpu.name}", gpu.memory_bytes, gpu.min_power_limit_w, gpu.max_power_limit_w)
                 for i in range(self.count)]
        f = DeviceFile.create(path, slots)
        for i in range(self.count):
            f.request_power_limit(i, self.limit_w)
        return f

    def requested_power_limit(self) -> float:
        """The power limit to enforce from the next step: the device file's request, else the start value, W."""
        if self.file is not None:
            self.limit_w = self.file.requested_power_limit(0)
        return self.limit_w

    def _set(self, t: float, **reading) -> None:
        """From `t` on the GPUs read `reading` (power_w and the rest); the energy before `t` is closed."""
        t = max(t, self.since)
        self.energy_j += self.reading.power_w * (t - self.since)
        self.since = t
        self.reading = Reading(time=t, energy_j=self.energy_j, power_limit_w=self.limit_w,
                               memory_used_bytes=self.memory_used_bytes, **reading)
        self._publish(self.reading)

    def _publish(self, reading: Reading) -> None:
        if self.file is not None:
            for i in range(self.count):
                self.file.write(i, reading)

    def step(self, step: StepResult) -> None:
        """`step` runs from its start."""
        c = step.cost
        self._set(step.start, power_w=c.power_w, sm_clock_hz=c.clock_ratio * self.perf.gpu.max_sm_clock_hz,
                  utilization=c.busy_fraction, sm_occupancy=min(1.0, c.compute_util + c.memory_util),
                  tensor_activity=c.compute_util, dram_bandwidth_utilization=c.memory_util,
                  clocks_event_reasons=SW_POWER_CAP if c.capped else 0)

    def wait(self, start: float) -> None:
        """From `start` the GPUs wait on the host: no kernels, at the clock the last step ran at (under
        a power limit the clock the limit left, so the wait stays below it)."""
        clock = self.reading.sm_clock_hz / self.perf.gpu.max_sm_clock_hz
        self._set(start, power_w=self.perf.waiting_power_w(clock), sm_clock_hz=self.reading.sm_clock_hz)

    def idle(self, t: float) -> None:
        """From `t` the GPUs have no work."""
        self._set(t, power_w=self.perf.gpu.idle_w, sm_clock_hz=0.2 * self.perf.gpu.max_sm_clock_hz)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def install_gpus(path, gpu: GPUProfile = H100_SXM, count: int = 1) -> None:
    """Creates the device file of `count` idle simulated GPUs before any engine runs, as GPUs exist
    before vLLM starts: an exporter finds them at once and each engine takes over their counters."""
    perf = PerfModel(LLAMA_3_1_8B, gpu, count)  # any model: idle GPUs run none
    SimulatedGPUs(perf, 0, str(path), None, time.time()).close()
