"""GPU selection, backend choice and the NVML backend's error handling.

CI has no NVIDIA GPU, so `FakeNVML` below stands in for the driver library behind the real
`pynvml` module's functions; the real-GPU tests are in tests/gpu/ and run on the H100 machine.
"""

import pynvml
import pytest

from jouletrace.exporter.gpu import backends, device as gpu

from jouletrace.exporter.gpu import nvml
from jouletrace.exporter.gpu.device import GPUError, NotSupported, Selection

DEVICES = [(0, "GPU-aaaa-0000"), (1, "GPU-bbbb-1111"), (2, "GPU-cccc-2222")]


def test_selection_by_index_uuid_and_prefix():
    assert Selection.parse("all").choose(DEVICES) == [0, 1, 2]
    assert Selection.parse("2,0").choose(DEVICES) == [2, 0]
    assert Selection.parse("GPU-bbbb").choose(DEVICES) == [1]
    assert Selection.parse("gpu-cccc-2222, 1").choose(DEVICES) == [2, 1]
    with pytest.raises(ValueError, match="matches 0 devices"):
        Selection.parse("7").choose(DEVICES)
    with pytest.raises(ValueError, match="matches 3 devices"):
        Selection.parse("GPU-").choose(DEVICES)


def test_selection_honours_visible_devices():
    assert Selection.from_environment("all", {"CUDA_VISIBLE_DEVICES": "1,2"}).choose(DEVICES) == [1, 2]
    assert Selection.from_environment("all", {"NVIDIA_VISIBLE_DEVICES": "GPU-aaaa"}).choose(DEVICES) == [0]
    assert Selection.from_environment("all", {"NVIDIA_VISIBLE_DEVICES": "all"}).choose(DEVICES) == [0, 1, 2]
    # CUDA_VISIBLE_DEVICES wins over NVIDIA_VISIBLE_DEVICES; an explicit selection wins over both
    env = {"CUDA_VISIBLE_DEVICES": "2", "NVIDIA_VISIBLE_DEVICES": "0"}
    assert Selection.from_environment("all", env).choose(DEVICES) == [2]
    assert Selection.from_environment("1", env).choose(DEVICES) == [1]
    with pytest.raises(ValueError, match="no GPU visible"):
        Selection.from_environment("all", {"NVIDIA_VISIBLE_DEVICES": "none"})


class FakeNVML:
    """The few pynvml entry points the backend calls, answering like a two-GPU driver."""

    def __init__(self, init_error=None):
        self.init_error = init_error
        self.energy_error = None
        self.power_field_supported = True
        self.lost = False

    def install(self, monkeypatch):
        for name in ("nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID",
                     "nvmlDeviceGetName", "nvmlDeviceGetFieldValues", "nvmlDeviceGetPowerUsage",
                     "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetClockInfo",
                     "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetTemperature",
                     "nvmlDeviceGetCurrentClocksEventReasons", "nvmlGpmQueryDeviceSupport"):
            monkeypatch.setattr(pynvml, name, getattr(self, name))
        monkeypatch.setattr(nvml, "_initialised", False)

    def nvmlInit(self):
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return int(uuid[-1])

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-fake-{h}"

    def nvmlDeviceGetName(self, h):
        return "Fake H100"

    def nvmlDeviceGetFieldValues(self, h, ids):
        values = (pynvml.c_nvmlFieldValue_t * len(ids))()
        for v, field in zip(values, ids):
            v.fieldId, v.timestamp = field, 1_800_000_000_000_000
            if self.lost:
                v.nvmlReturn = pynvml.NVML_ERROR_GPU_IS_LOST
            elif field == pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
                v.nvmlReturn = self.energy_error or pynvml.NVML_SUCCESS
                v.valueType, v.value.ullVal = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 123_456
            elif field == pynvml.NVML_FI_DEV_POWER_INSTANT:
                v.nvmlReturn = pynvml.NVML_SUCCESS if self.power_field_supported else pynvml.NVML_ERROR_NOT_SUPPORTED
                v.valueType, v.value.uiVal = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, 250_000
        return values

    def nvmlDeviceGetPowerUsage(self, h):
        return 240_000

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetClockInfo(self, h, clock):
        return 1500

    def nvmlDeviceGetUtilizationRates(self, h):
        return pynvml.c_nvmlUtilization_t(gpu=50, memory=20)

    def nvmlDeviceGetMemoryInfo(self, h):
        return pynvml.c_nvmlMemory_t(total=80 << 30, free=60 << 30, used=20 << 30)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 61

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return pynvml.nvmlClocksEventReasonSwPowerCap

    def nvmlGpmQueryDeviceSupport(self, h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def test_auto_falls_back_to_sim_only_without_a_driver(monkeypatch, caplog):
    FakeNVML(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND).install(monkeypatch)
    devices = backends.open_devices("auto", Selection(), sim_options={"count": 2})
    assert [d.backend for d in devices] == ["sim", "sim"]
    assert "SIMULATED" in caplog.text
    with pytest.raises(gpu.BackendUnavailable):
        backends.open_devices("nvml", Selection())


def test_auto_fails_loudly_when_nvml_is_present_but_broken(monkeypatch):
    FakeNVML(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED).install(monkeypatch)
    with pytest.raises(RuntimeError, match="present but failed"):
        backends.open_devices("auto", Selection())


def test_nvml_reads_fields_with_driver_timestamps(monkeypatch):
    fake = FakeNVML()
    fake.install(monkeypatch)
    devices = backends.open_devices("auto", Selection.parse("1"))
    assert [(d.backend, d.index, d.uuid) for d in devices] == [("nvml", 1, "GPU-fake-1")]
    dev = devices[0]
    assert dev.energy_mj() == (123_456, 1_800_000_000.0)
    assert dev.power_w() == (250.0, 1_800_000_000.0)  # the instant field, not the 1 s average
    fake.power_field_supported = False
    assert dev.power_w() == (240.0, None)  # falls back to the averaged reading
    st = dev.status()
    assert st.power_limit_w is None  # unsupported reads are absent, not errors
    assert (st.sm_clock_hz, st.utilization, st.memory_used_bytes, st.temperature_c) == (1.5e9, 0.5, 20 << 30, 61.0)
    assert st.clocks_event_reasons["sw_power_cap"] and not st.clocks_event_reasons["hw_slowdown"]
    assert st.sm_occupancy is None  # no GPM on this device


def test_nvml_errors_map_to_codes(monkeypatch):
    fake = FakeNVML()
    fake.install(monkeypatch)
    dev = backends.open_devices("nvml", Selection.parse("0"))[0]
    fake.energy_error = pynvml.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(NotSupported):
        dev.energy_mj()
    fake.lost = True
    with pytest.raises(GPUError) as err:
        dev.power_w()
    assert err.value.code == "gpu_lost"
    with pytest.raises(GPUError):
        dev.reopen()
    fake.lost = False
    dev.reopen()
    assert dev.power_w()[0] == 250.0
