"""The simulated backend: a GPU whose power follows the load it is given.

Power is piecewise constant over 100 ms ticks: idle power plus load times the dynamic range,
perturbed by a deterministic noise derived from (seed, GPU index, tick) and capped at the power
limit; a new power limit applies from the next tick. The energy counter is the exact integral
of that power, so the same seed and the same read times give the same numbers. Faults can be
injected for tests.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from typing import Callable

from jouletrace.exporter.gpu.device import GPUDevice, GPUError, GPUStatus, NotSupported, Selection

TICK_S = 0.1
MAX_SM_CLOCK_HZ = 1.98e9
GIB = 1024**3


def _unit_noise(seed: int, index: int, tick: int) -> float:
    """A deterministic value in [-1, 1) (splitmix64 of the tick's identity)."""
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + tick) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return (x / 2.0**63) - 1.0


def wave_load(t: float, period_s: float = 300.0) -> float:
    """A load that swings between idle and full over `period_s` seconds (the default demo load)."""
    return min(1.0, max(0.0, 0.5 + 0.6 * math.sin(2 * math.pi * t / period_s)))


class SimulatedGPU(GPUDevice):
    backend = "sim"

    def __init__(
        self,
        index: int = 0,
        *,
        seed: int = 0,
        idle_w: float = 75.0,
        max_w: float = 700.0,
        power_limit_w: float = 700.0,
        min_power_limit_w: float = 200.0,
        noise: float = 0.02,
        load: float | Callable[[float], float] = 0.0,
        energy_counter: bool = True,
        memory_total_bytes: int = 80 * GIB,
        clock: Callable[[], float] = time.time,
    ):
        self.index = index
        self.uuid = f"GPU-5100{seed:04x}-0000-4000-8000-{index:012x}"
        self.name = "Simulated H100"
        self.seed = seed
        self.idle_w = idle_w
        self.max_w = max_w
        self.min_power_limit_w = min_power_limit_w
        self.noise = noise
        self.has_energy_counter = energy_counter
        self.memory_total_bytes = memory_total_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._t = self._created = clock()
        self._load_since = [self._t]  # load history: loads[i] holds from load_since[i] on
        self._loads = [load]
        self._limit_since = [self._t]  # limit history, as the load's
        self._limits = [power_limit_w]
        self._energy_j = 0.0
        self._counter_offset_mj = 0
        self.fail_reads = 0  # the next N reads raise GPUError("gpu_lost")

    # -- the physics ------------------------------------------------------------------------
    def load_at(self, t: float) -> float:
        load = self._loads[max(0, bisect.bisect_right(self._load_since, t) - 1)]
        return min(1.0, max(0.0, load(t) if callable(load) else load))

    def limit_at(self, t: float) -> float:
        """The power limit in force at `t` (W)."""
        return self._limits[max(0, bisect.bisect_right(self._limit_since, t) - 1)]

    def _uncapped_power(self, tick: int) -> float:
        t = tick * TICK_S
        p = self.idle_w + self.load_at(t) * (self.max_w - self.idle_w)
        return p * (1.0 + self.noise * _unit_noise(self.seed, self.index, tick))

    def power_at_tick(self, tick: int) -> float:
        return min(self._uncapped_power(tick), self.limit_at(tick * TICK_S))

    def _integral(self, t0: float, t1: float) -> float:
        """Exact energy (J) from `t0` to `t1`."""
        energy, t = 0.0, t0
        while t < t1:
            tick = math.floor(t / TICK_S)
            t_next = min(t1, (tick + 1) * TICK_S)
            energy += self.power_at_tick(tick) * (t_next - t)
            t = t_next
        return energy

    def _advance(self, now: float) -> None:
        if now > self._t:
            self._energy_j += self._integral(self._t, now)
            self._t = now

    def true_energy_j(self, t: float) -> float:
        """The exact energy (J) from creation to `t`: what a perfect meter would say."""
        with self._lock:
            return self._integral(self._created, t)

    def set_load(self, load: float | Callable[[float], float]) -> None:
        """Change the load from now on."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            self._load_since.append(now)
            self._loads.append(load)

    # -- fault injection ----------------------------------------------------------------------
    def reset_counter(self) -> None:
        """Simulate a driver reload: the counter restarts from zero."""
        with self._lock:
            self._advance(self._clock())
            self._counter_offset_mj = -int(self._energy_j * 1000)

    def jump_counter(self, millijoules: int) -> None:
        """Make the counter jump by an implausible amount."""
        with self._lock:
            self._counter_offset_mj += millijoules

    def _check_fault(self, call: str) -> None:
        if self.fail_reads > 0:
            self.fail_reads -= 1
            raise GPUError(call, "gpu_lost", "injected fault")

    # -- the device interface -----------------------------------------------------------------
    def energy_mj(self) -> tuple[int, float | None]:
        with self._lock:
            self._check_fault("energy")
            if not self.has_energy_counter:
                raise NotSupported("energy")
            now = self._clock()
            self._advance(now)
            return int(self._energy_j * 1000) + self._counter_offset_mj, now

    def power_w(self) -> tuple[float, float | None]:
        with self._lock:
            self._check_fault("power")
            now = self._clock()
            self._advance(now)
            return round(self.power_at_tick(math.floor(now / TICK_S)), 3), now

    def status(self) -> GPUStatus:
        with self._lock:
            self._check_fault("status")
            tick = math.floor(self._clock() / TICK_S)
        load = self.load_at(tick * TICK_S)
        limit = self.limit_at(tick * TICK_S)
        uncapped = self._uncapped_power(tick)
        capped = uncapped > limit
        clock_scale = min(1.0, limit / uncapped) if capped else 1.0
        return GPUStatus(
            power_limit_w=limit,
            sm_clock_hz=(0.35 + 0.65 * min(1.0, load * 4)) * MAX_SM_CLOCK_HZ * clock_scale,
            utilization=load,
            memory_used_bytes=int(self.memory_total_bytes * (0.1 + 0.8 * load)),
            memory_total_bytes=self.memory_total_bytes,
            temperature_c=30.0 + 45.0 * min(uncapped, limit) / self.max_w,
            clocks_event_reasons={"sw_power_cap": capped, "hw_slowdown": False, "sw_thermal": False,
                                  "hw_thermal": False, "hw_power_brake": False},
            sm_occupancy=0.6 * load,
            tensor_activity=0.5 * load,
            dram_bandwidth_utilization=0.7 * load,
        )

    def reopen(self) -> None:
        self._check_fault("reopen")

    def power_limit_constraints_w(self) -> tuple[float, float]:
        return self.min_power_limit_w, self.max_w

    def power_limit_w(self) -> float:
        return self._limits[-1]

    def set_power_limit_w(self, watts: float) -> None:
        low, high = self.power_limit_constraints_w()
        if not low <= watts <= high:
            raise GPUError("set_power_limit", "invalid_argument", f"{watts:g} W is outside {low:g}-{high:g} W")
        with self._lock:
            self._check_fault("set_power_limit")
            now = self._clock()
            self._advance(now)
            self._limit_since.append((math.floor(now / TICK_S) + 1) * TICK_S)
            self._limits.append(float(watts))


def open_devices(selection: Selection, *, count: int = 1, seed: int = 0,
                 load: float | Callable[[float], float] = wave_load, **kwargs) -> list[SimulatedGPU]:
    """`count` simulated GPUs, narrowed by `selection`."""
    devices = [SimulatedGPU(i, seed=seed, load=load, **kwargs) for i in range(count)]
    chosen = selection.choose([(d.index, d.uuid) for d in devices])
    return [d for d in devices if d.index in chosen]
