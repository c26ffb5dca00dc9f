"""pynvml's driver calls answered by simulated GPUs, with NVML errors injected call by call.

No NVIDIA GPU exists where these tests run. This stands in for the driver behind the real `pynvml`
module's functions, so exporter/gpu/nvml.py's NVMLDevice runs unchanged and meets the real
pynvml.NVMLError_* exceptions and per-field return codes, while the energy counter and power are a
SimulatedGPU's, whose true energy every test knows.
"""

from __future__ import annotations

import pynvml

from jouletrace.exporter.gpu import nvml
from jouletrace.exporter.gpu.device import CLOCKS_EVENT_REASONS
from jouletrace.exporter.gpu.simulated import SimulatedGPU

ENERGY_FIELD = pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION
POWER_FIELD = pynvml.NVML_FI_DEV_POWER_INSTANT
STATUS_CALLS = ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetClockInfo", "nvmlDeviceGetUtilizationRates",
                "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetTemperature", "nvmlDeviceGetCurrentClocksEventReasons")


class SimNVML:
    """The driver of `gpus` (handle = index). `errors` maps a pynvml function to the NVML_ERROR_* it
    raises; `field_errors` maps a field id to the return code its value carries; a GPU in `lost`
    fails every call with GPU_IS_LOST and is not found by UUID."""

    def __init__(self, gpus: list[SimulatedGPU]):
        self.gpus = gpus
        self.errors: dict[str, int] = {}
        self.field_errors: dict[int, int] = {}
        self.lost: set[int] = set()

    def install(self, monkeypatch) -> "SimNVML":
        for name in ("nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByUUID",
                     "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetFieldValues", "nvmlDeviceGetPowerUsage",
                     "nvmlGpmQueryDeviceSupport", *STATUS_CALLS):
            monkeypatch.setattr(pynvml, name, self._guarded(name))
        monkeypatch.setattr(nvml, "_initialised", False)
        return self

    def _guarded(self, name: str):
        answer = getattr(self, name)

        def call(*args):
            if name in self.errors:
                raise pynvml.NVMLError(self.errors[name])
            if args and isinstance(args[0], int) and args[0] in self.lost:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            return answer(*args)

        return call

    # -- the driver's answers -------------------------------------------------------------
    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for gpu in self.gpus:
            if gpu.uuid == uuid and gpu.index not in self.lost:
                return gpu.index
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, h):
        return self.gpus[h].uuid

    def nvmlDeviceGetName(self, h):
        return self.gpus[h].name

    def nvmlDeviceGetFieldValues(self, h, ids):
        values = (pynvml.c_nvmlFieldValue_t * len(ids))()
        for v, field in zip(values, ids):
            v.fieldId = field
            v.nvmlReturn = self.field_errors.get(field, pynvml.NVML_SUCCESS)
            if v.nvmlReturn != pynvml.NVML_SUCCESS:
                continue
            if field == ENERGY_FIELD:
                mj, t = self.gpus[h].energy_mj()
                v.valueType, v.value.ullVal = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, mj
            else:
                watts, t = self.gpus[h].power_w()
                v.valueType, v.value.uiVal = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, round(watts * 1000)
            v.timestamp = round(t * 1e6)
        return values

    def nvmlDeviceGetPowerUsage(self, h):
        return round(self.gpus[h].power_w()[0] * 1000)

    def nvmlGpmQueryDeviceSupport(self, h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return round(self.gpus[h].status().power_limit_w * 1000)

    def nvmlDeviceGetClockInfo(self, h, clock):
        return round(self.gpus[h].status().sm_clock_hz / 1e6)

    def nvmlDeviceGetUtilizationRates(self, h):
        return pynvml.c_nvmlUtilization_t(gpu=round(self.gpus[h].status().utilization * 100), memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):
        st = self.gpus[h].status()
        return pynvml.c_nvmlMemory_t(total=st.memory_total_bytes, used=st.memory_used_bytes,
                                     free=st.memory_total_bytes - st.memory_used_bytes)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return round(self.gpus[h].status().temperature_c)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        active = self.gpus[h].status().clocks_event_reasons
        return sum(bit for bit, name in CLOCKS_EVENT_REASONS.items() if active.get(name))
