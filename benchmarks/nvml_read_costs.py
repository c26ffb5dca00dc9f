"""What NVML reads cost on this GPU, and how fresh their values are.

For each read: median wall and CPU microseconds per call. For the energy counter and instant
power field values: how far the driver's timestamp lags the read, and how often the value changes.
Under a load step (torch, if `--step`), instant vs 1 s-average power. Prints JSON lines.

    python benchmarks/nvml_read_costs.py [--step]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import pynvml


def cost(fn, n: int) -> dict:
    walls, cpus = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.thread_time() - c)
    return {"wall_us": statistics.median(walls) * 1e6, "cpu_us": statistics.median(cpus) * 1e6, "n": n}


def freshness(h, field: int, seconds: float = 3.0, period: float = 0.01) -> dict:
    lags, changes, last = [], [], None
    end = time.time() + seconds
    while time.time() < end:
        t0 = time.time()
        v = pynvml.nvmlDeviceGetFieldValues(h, [field])[0]
        t1 = time.time()
        lags.append((t0 + t1) / 2 - v.timestamp / 1e6)
        value = v.value.ullVal if field == pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION else v.value.uiVal
        if last is not None and value != last[1]:
            changes.append(v.timestamp / 1e6 - last[0])
        if last is None or value != last[1]:
            last = (v.timestamp / 1e6, value)
        time.sleep(period)
    return {"timestamp_lag_ms_median": statistics.median(lags) * 1e3, "timestamp_lag_ms_max": max(lags) * 1e3,
            "update_period_ms_median": statistics.median(changes) * 1e3 if changes else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", action="store_true", help="record instant and average power across a load step")
    args = ap.parse_args()
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    n = pynvml
    reads = {
        "energy_counter": (lambda: n.nvmlDeviceGetTotalEnergyConsumption(h), 100),
        "energy_field_83": (lambda: n.nvmlDeviceGetFieldValues(h, [n.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION]), 100),
        "power_usage": (lambda: n.nvmlDeviceGetPowerUsage(h), 2000),
        "power_instant_field_186": (lambda: n.nvmlDeviceGetFieldValues(h, [n.NVML_FI_DEV_POWER_INSTANT]), 2000),
        "enforced_limit": (lambda: n.nvmlDeviceGetEnforcedPowerLimit(h), 2000),
        "sm_clock": (lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM), 2000),
        "utilization": (lambda: n.nvmlDeviceGetUtilizationRates(h), 2000),
        "memory": (lambda: n.nvmlDeviceGetMemoryInfo(h), 2000),
        "temperature": (lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU), 2000),
        "clocks_event_reasons": (lambda: n.nvmlDeviceGetCurrentClocksEventReasons(h), 2000),
    }
    for name, (fn, count) in reads.items():
        print(json.dumps({"read": name, **cost(fn, count)}), flush=True)
    for name, field in (("energy_field_83", n.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION),
                        ("power_instant_field_186", n.NVML_FI_DEV_POWER_INSTANT)):
        print(json.dumps({"freshness": name, **freshness(h, field)}), flush=True)
    if args.step:
        script = pathlib.Path(__file__).resolve().parents[1] / "tests" / "gpu" / "load.py"
        trace, t_start = [], time.time()
        load = subprocess.Popen([sys.executable, str(script), "3"], env=dict(os.environ))
        while time.time() < t_start + 8:
            inst = n.nvmlDeviceGetFieldValues(h, [n.NVML_FI_DEV_POWER_INSTANT])[0].value.uiVal / 1000
            avg = n.nvmlDeviceGetPowerUsage(h) / 1000
            trace.append((round(time.time() - t_start, 2), inst, avg))
            time.sleep(0.1)
        load.wait()
        print(json.dumps({"load_step_trace_s_instant_w_average_w": trace}), flush=True)


if __name__ == "__main__":
    main()
