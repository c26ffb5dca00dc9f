"""An independent reference reading of the NVML energy counter, sharp to a few milliseconds.

The counter's value changes only about every 100 ms, so one read can be up to 100 ms stale. The
reference reads in a burst until the value changes and stamps the change at the midpoint of the
two reads around it (each read takes ~3 ms). Used by the GPU tests and benchmarks, never by the
exporter itself (a burst costs ~100 ms of CPU).
"""

from __future__ import annotations

import time

import pynvml


def counter_edge(handle, timeout_s: float = 1.0) -> tuple[float, float]:
    """(Unix time of a counter update, counter joules just after it)."""
    def read() -> tuple[float, int]:
        t0 = time.time()
        mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return (t0 + time.time()) / 2, mj

    t_prev, first = read()
    deadline = t_prev + timeout_s
    while True:
        t, mj = read()
        if mj != first:
            return (t_prev + t) / 2, mj / 1000.0
        if t > deadline:
            raise TimeoutError("energy counter did not change")
        t_prev = t
