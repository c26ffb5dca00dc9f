"""Reads the figures of the simulator's H100 profile that NVML reports (read-only queries: nothing is
changed): power-limit range and default, maximum clocks, memory, and idle power (median of 20
reads, 100 ms apart, of a GPU with nothing running).

    python benchmarks/h100_profile.py
"""

import pynvml, json, time
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
lo, hi = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h)
out = {"name": pynvml.nvmlDeviceGetName(h), "power_limit_min_w": lo / 1000, "power_limit_max_w": hi / 1000,
       "power_limit_default_w": pynvml.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000,
       "enforced_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
       "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
       "max_mem_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM),
       "memory_total_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total,
       "memory_bus_width_bits": pynvml.nvmlDeviceGetMemoryBusWidth(h)}
p = []
for _ in range(20):
    p.append(pynvml.nvmlDeviceGetPowerUsage(h) / 1000); time.sleep(0.1)
out["idle_power_w_median"] = sorted(p)[len(p) // 2]
print(json.dumps(out, indent=1))
