"""GPU energy over a time window: from a running jouletrace exporter, or straight from NVML.

The exporter answers `GET /api/v1/energy?start=<unix s>&end=<unix s>` on its metrics port:
200 with `{"start", "end", "joules", "gpus": [{"index", "uuid", "backend", "method", "joules"}]}`,
503 with `Retry-After` while the window is not measured yet (polled), 416 when it fell out of the
exporter's retention."""

from __future__ import annotations

import asyncio
import bisect
import threading
import time

import aiohttp

from .clock import now


class EnergyUnavailable(RuntimeError):
    """No energy for the window, with a one-line reason."""


async def exporter_energy(session: aiohttp.ClientSession, exporter_url: str, start: float, end: float,
                          wait_s: float = 180.0) -> dict:
    """The exporter's answer for [start, end] (unix s), polling while it answers 503 (at most
    `wait_s` s). Adds `"source": "exporter"`."""
    url = exporter_url.rstrip("/") + "/api/v1/energy"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            async with session.get(url, params={"start": f"{start:.6f}", "end": f"{end:.6f}"},
                                   timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status == 200:
                    data = await resp.json(content_type=None)
                    if not isinstance(data.get("joules"), (int, float)):
                        raise EnergyUnavailable(f"{url} answered without `joules`: {str(data)[:200]}")
                    return {**data, "source": "exporter"}
                if resp.status == 416:
                    raise EnergyUnavailable(f"{url}: the window fell out of the exporter's retention (416)")
                if resp.status != 503:
                    raise EnergyUnavailable(f"{url} answered {resp.status}: {(await resp.text())[:200]}")
                retry = _retry_after(resp.headers.get("Retry-After"))
        except aiohttp.ClientError as e:
            raise EnergyUnavailable(f"cannot reach the exporter at {exporter_url}: {e}") from e
        if time.monotonic() + retry > deadline:
            raise EnergyUnavailable(f"{url}: window still not measured after {wait_s:.0f} s (503)")
        await asyncio.sleep(retry)


def _retry_after(value: str | None) -> float:
    try:
        return min(30.0, max(0.1, float(value)))
    except (TypeError, ValueError):
        return 1.0


class CounterTimeline:
    """Timestamped cumulative energy readings (J) of one GPU; energy between two times by linear
    interpolation."""

    def __init__(self):
        self.t: list[float] = []
        self.j: list[float] = []

    def add(self, t: float, joules: float) -> None:
        self.t.append(t)
        self.j.append(joules)

    def at(self, t: float) -> float:
        if not self.t or t < self.t[0] or t > self.t[-1]:
            raise EnergyUnavailable(f"no energy reading around {t:.3f}")
        i = bisect.bisect_left(self.t, t)
        if self.t[i] == t:
            return self.j[i]
        t0, t1, j0, j1 = self.t[i - 1], self.t[i], self.j[i - 1], self.j[i]
        return j0 + (j1 - j0) * (t - t0) / (t1 - t0)

    def between(self, start: float, end: float) -> float:
        return self.at(end) - self.at(start)


class NvmlEnergy:
    """Reads every visible GPU's energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ) every
    `period_s` s in a thread, from start() to stop()."""

    def __init__(self, period_s: float = 0.5):
        try:
            import pynvml
            pynvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
            raise EnergyUnavailable(f"no NVML here ({e}); give --exporter URL of a running jouletrace exporter") from e
        self.nvml = pynvml
        self.period_s = period_s
        self.gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            self.gpus.append((i, uuid.decode() if isinstance(uuid, bytes) else uuid, h, CounterTimeline()))
        if not self.gpus:
            raise EnergyUnavailable("NVML sees no GPU; give --exporter URL of a running jouletrace exporter")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvml-energy", daemon=True)

    def _read(self) -> None:
        for _, _, h, line in self.gpus:
            line.add(now(), self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self._read()

    def start(self) -> None:
        self._read()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._read()

    def window(self, start: float, end: float) -> dict:
        """The exporter's answer shape for [start, end], from the counter readings."""
        gpus = [{"index": i, "uuid": u, "backend": "nvml", "method": "counter", "joules": line.between(start, end)}
                for i, u, _, line in self.gpus]
        return {"start": start, "end": end, "joules": sum(g["joules"] for g in gpus), "gpus": gpus, "source": "nvml"}
