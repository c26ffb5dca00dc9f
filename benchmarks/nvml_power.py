"""One GPU's power as the benchmarks read it through NVML, read only (nothing here changes a GPU setting).

`Power(index)` (or `Power(uuid=...)`) reads the GPU's total-energy counter (J) and polls its
POWER_INSTANT field (186, W) every 20 ms from a thread between `start()` and `stop()`, each sample
stamped with its Unix time, so that a caller can split the samples by the times of its own phases
(`mean_between`). Also: the
device's name, driver, power limit, maximum SM clock and memory, and the SM clock now."""

from __future__ import annotations

import threading
import time

import pynvml

FI_POWER_INSTANT = 186
POLL_S = 0.02


class Power:
    """NVML readings of one GPU: the energy counter (J) and POWER_INSTANT polled in a thread (W)."""

    def __init__(self, index: int = 0, uuid: str | None = None) -> None:
        """GPU `index` in NVML's order, or the GPU of `uuid` (`GPU-...`) where given."""
        pynvml.nvmlInit()
        self.h = pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(index)
        self.samples: list[tuple[float, float]] = []   # (Unix time, W)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def instant_w(self) -> float:
        (v,) = pynvml.nvmlDeviceGetFieldValues(self.h, [FI_POWER_INSTANT])
        return v.value.uiVal / 1000.0

    def energy_j(self) -> float:
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.h) / 1000.0

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self.samples.append((time.time(), self.instant_w()))

    def start(self) -> float:
        """Starts polling (the samples of an earlier start are dropped); the counter's joules now."""
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self.energy_j()

    def stop(self) -> tuple[float, float]:
        """(counter joules now, mean POWER_INSTANT since start in W)."""
        e = self.energy_j()
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return e, sum(w for _, w in self.samples) / max(1, len(self.samples))

    def mean_between(self, t0: float, t1: float) -> float | None:
        """Mean POWER_INSTANT of the samples stamped within [t0, t1] (Unix s), W; None without any."""
        inside = [w for t, w in self.samples if t0 <= t <= t1]
        return sum(inside) / len(inside) if inside else None

    def device(self) -> dict:
        h = self.h
        def text(v: str | bytes) -> str:
            return v.decode() if isinstance(v, bytes) else v

        return {"name": text(pynvml.nvmlDeviceGetName(h)), "uuid": text(pynvml.nvmlDeviceGetUUID(h)),
                "driver": text(pynvml.nvmlSystemGetDriverVersion()),
                "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
                "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                "memory_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total}

    def sm_clock_mhz(self) -> int:
        return pynvml.nvmlDeviceGetClockInfo(self.h, pynvml.NVML_CLOCK_SM)
