"""The NVML backend: real NVIDIA GPUs through `pynvml` (nvidia-ml-py)."""

from __future__ import annotations

import logging
import threading

from jouletrace.exporter.gpu.device import (
    CLOCKS_EVENT_REASONS,
    BackendUnavailable,
    GPUDevice,
    GPUError,
    GPUStatus,
    NotSupported,
    Selection,
)

log = logging.getLogger(__name__)

_init_lock = threading.Lock()
_initialised = False


def _code(exc: Exception) -> str:
    import pynvml

    value = getattr(exc, "value", None)
    names = {
        pynvml.NVML_ERROR_NOT_SUPPORTED: "not_supported",
        pynvml.NVML_ERROR_GPU_IS_LOST: "gpu_lost",
        pynvml.NVML_ERROR_NO_PERMISSION: "no_permission",
        pynvml.NVML_ERROR_TIMEOUT: "timeout",
        pynvml.NVML_ERROR_INVALID_ARGUMENT: "invalid_argument",
        pynvml.NVML_ERROR_UNINITIALIZED: "uninitialized",
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "driver_not_loaded",
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "library_not_found",
        pynvml.NVML_ERROR_NOT_FOUND: "not_found",
        pynvml.NVML_ERROR_RESET_REQUIRED: "reset_required",
    }
    return names.get(value, f"nvml_{value}" if value is not None else "unknown")


def _init() -> None:
    global _initialised
    import pynvml

    with _init_lock:
        if _initialised:
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            if exc.value == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
                raise BackendUnavailable(f"NVML library not found: {exc}") from exc
            raise RuntimeError(f"NVML is present but failed to initialise: {exc}") from exc
        _initialised = True


class NVMLDevice(GPUDevice):
    backend = "nvml"

    def __init__(self, index: int):
        import pynvml

        self._nvml = pynvml
        self.index = index
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.uuid = pynvml.nvmlDeviceGetUUID(self._handle)
        self.name = pynvml.nvmlDeviceGetName(self._handle)
        self._gpm_samples = None
        self._gpm_supported: bool | None = None
        self._instant_power = True  # field POWER_INSTANT where the driver has it, else the 1 s average

    def _call(self, name: str, fn, *args):
        try:
            return fn(self._handle, *args)
        except self._nvml.NVMLError as exc:
            code = _code(exc)
            if code == "not_supported":
                raise NotSupported(name) from exc
            raise GPUError(name, code, str(exc)) from exc

    def _field(self, name: str, field_id: int) -> tuple[int, float]:
        """One field value and the driver's timestamp of it (Unix s)."""
        value = self._call(name, self._nvml.nvmlDeviceGetFieldValues, [field_id])[0]
        if value.nvmlReturn != self._nvml.NVML_SUCCESS:
            exc = self._nvml.NVMLError(value.nvmlReturn)
            code = _code(exc)
            if code == "not_supported":
                raise NotSupported(name)
            raise GPUError(name, code, str(exc))
        raw = value.value.ullVal if value.valueType == self._nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG else value.value.uiVal
        return int(raw), value.timestamp / 1e6

    def energy_mj(self) -> tuple[int, float | None]:
        return self._field("energy", self._nvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION)

    def power_w(self) -> tuple[float, float | None]:
        if self._instant_power:
            try:
                mw, t = self._field("power", self._nvml.NVML_FI_DEV_POWER_INSTANT)
                return mw / 1000.0, t
            except NotSupported:
                self._instant_power = False
        return self._call("power", self._nvml.nvmlDeviceGetPowerUsage) / 1000.0, None

    def _optional(self, name: str, fn, *args):
        try:
            return self._call(name, fn, *args)
        except NotSupported:
            return None

    def status(self) -> GPUStatus:
        n = self._nvml
        st = GPUStatus()
        limit = self._optional("power_limit", n.nvmlDeviceGetEnforcedPowerLimit)
        st.power_limit_w = None if limit is None else limit / 1000.0
        clock = self._optional("sm_clock", n.nvmlDeviceGetClockInfo, n.NVML_CLOCK_SM)
        st.sm_clock_hz = None if clock is None else clock * 1e6
        util = self._optional("utilization", n.nvmlDeviceGetUtilizationRates)
        st.utilization = None if util is None else util.gpu / 100.0
        mem = self._optional("memory", n.nvmlDeviceGetMemoryInfo)
        if mem is not None:
            st.memory_used_bytes, st.memory_total_bytes = int(mem.used), int(mem.total)
        temp = self._optional("temperature", n.nvmlDeviceGetTemperature, n.NVML_TEMPERATURE_GPU)
        st.temperature_c = None if temp is None else float(temp)
        reasons = self._optional("clocks_event_reasons", n.nvmlDeviceGetCurrentClocksEventReasons)
        if reasons is not None:
            st.clocks_event_reasons = {name: bool(reasons & bit) for bit, name in CLOCKS_EVENT_REASONS.items()}
        self._read_gpm(st)
        return st

    def _read_gpm(self, st: GPUStatus) -> None:
        """SM occupancy, tensor activity and DRAM bandwidth from two GPM samples a status period apart."""
        n = self._nvml
        if self._gpm_supported is None:
            try:
                support = n.nvmlGpmQueryDeviceSupport(self._handle)
                self._gpm_supported = bool(support.isSupportedDevice)
                if self._gpm_supported:
                    self._gpm_samples = [n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()]
                    n.nvmlGpmSampleGet(self._handle, self._gpm_samples[0])
            except (n.NVMLError, AttributeError):
                self._gpm_supported = False
            return
        if not self._gpm_supported:
            return
        previous, current = self._gpm_samples
        try:
            n.nvmlGpmSampleGet(self._handle, current)
            request = n.c_nvmlGpmMetricsGet_t()
            request.version = n.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = 3
            request.sample1 = previous
            request.sample2 = current
            ids = (n.NVML_GPM_METRIC_SM_OCCUPANCY, n.NVML_GPM_METRIC_ANY_TENSOR_UTIL, n.NVML_GPM_METRIC_DRAM_BW_UTIL)
            for slot, metric_id in enumerate(ids):
                request.metrics[slot].metricId = metric_id
            n.nvmlGpmMetricsGet(request)
            values = [request.metrics[slot].value / 100.0 for slot in range(3)]
            st.sm_occupancy, st.tensor_activity, st.dram_bandwidth_utilization = values
        except n.NVMLError as exc:
            log.debug("GPU %d: GPM read failed: %s", self.index, exc)
        finally:
            self._gpm_samples = [current, previous]

    def power_limit_constraints_w(self) -> tuple[float, float]:
        n = self._nvml
        low_mw, high_mw = self._call("power_limit_constraints", n.nvmlDeviceGetPowerManagementLimitConstraints)
        return low_mw / 1000.0, high_mw / 1000.0

    def power_limit_w(self) -> float:
        return self._call("power_limit", self._nvml.nvmlDeviceGetPowerManagementLimit) / 1000.0

    def set_power_limit_w(self, watts: float) -> None:
        self._call("set_power_limit", self._nvml.nvmlDeviceSetPowerManagementLimit, int(round(watts * 1000)))

    def reopen(self) -> None:
        n = self._nvml
        try:
            self._handle = n.nvmlDeviceGetHandleByUUID(self.uuid)
        except n.NVMLError as exc:
            raise GPUError("reopen", _code(exc), str(exc)) from exc
        self._gpm_supported = None


def open_devices(selection: Selection) -> list[NVMLDevice]:
    """All NVML devices chosen by `selection`; raises BackendUnavailable where no driver exists."""
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency; a broken install is not "no driver"
        raise RuntimeError(f"pynvml cannot be imported: {exc}") from exc
    _init()
    count = pynvml.nvmlDeviceGetCount()
    present = []
    for i in range(count):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        present.append((i, pynvml.nvmlDeviceGetUUID(handle)))
    if not present:
        raise RuntimeError("NVML reports no GPU on this machine")
    return [NVMLDevice(i) for i in selection.choose(present)]
