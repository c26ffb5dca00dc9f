"""The GPU device interface shared by every backend, and GPU selection.

A backend opens devices; a device answers cheap reads (power, status) and the costly cumulative
energy counter, and may take a power limit within its constraints. Units: watts, millijoules
(counter), hertz, bytes, degrees Celsius, ratios 0-1.
"""

from __future__ import annotations

import abc
import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: Clocks-event reasons exported, by NVML bit value.
CLOCKS_EVENT_REASONS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
}


class GPUError(Exception):
    """A device read failed. `code` is a short stable name (e.g. "gpu_lost", "unknown")."""

    def __init__(self, call: str, code: str, message: str = ""):
        super().__init__(f"{call}: {code}{': ' + message if message else ''}")
        self.call = call
        self.code = code


class NotSupported(GPUError):
    """The device does not offer this read (NVML_ERROR_NOT_SUPPORTED)."""

    def __init__(self, call: str):
        super().__init__(call, "not_supported")


class BackendUnavailable(Exception):
    """The backend's library or driver is absent altogether (only then may `auto` fall back)."""


@dataclass(slots=True)
class GPUStatus:
    """Cheap readings taken about once a second; a field is None when the device lacks it."""

    power_limit_w: float | None = None
    sm_clock_hz: float | None = None
    utilization: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    clocks_event_reasons: dict[str, bool] = field(default_factory=dict)
    sm_occupancy: float | None = None
    tensor_activity: float | None = None
    dram_bandwidth_utilization: float | None = None


class GPUDevice(abc.ABC):
    """One GPU. Reads raise GPUError (NotSupported where the device lacks the read)."""

    backend: str
    index: int
    uuid: str
    name: str

    @abc.abstractmethod
    def energy_mj(self) -> tuple[int, float | None]:
        """The cumulative energy counter (mJ) and when the device measured it (Unix s), if it says.

        Costly on real hardware: ~4 ms of CPU per read on an H100.
        """

    @abc.abstractmethod
    def power_w(self) -> tuple[float, float | None]:
        """Current power draw (W) and when the device measured it (Unix s), if it says. Cheap."""

    @abc.abstractmethod
    def status(self) -> GPUStatus:
        """Limit, clocks, utilization, memory, temperature, clocks-event reasons, GPM ratios."""

    def reopen(self) -> None:
        """Re-acquire the device after errors (a GPU that comes back is picked up again)."""

    def power_limit_constraints_w(self) -> tuple[float, float]:
        """The lowest and highest power limit the device accepts (W)."""
        raise NotSupported("power_limit_constraints")

    def power_limit_w(self) -> float:
        """The power limit set on the device, the one `set_power_limit_w` changes (W). The enforced
        limit (`status()`) can be lower where other limits bind."""
        raise NotSupported("power_limit")

    def set_power_limit_w(self, watts: float) -> None:
        """Enforce a power limit of `watts` W from now on (real GPUs: needs root)."""
        raise NotSupported("set_power_limit")


#: The source of a selection that could not tell which GPUs are this pod's (`Selection.reason` says why).
UNRESOLVED = "unresolved"
#: The source of an unresolved selection made definite by the only GPU visible.
ONLY_GPU = "only-gpu"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which GPUs to sample: `all`, or a list of indices and/or UUIDs (prefixes allowed), and where
    the choice came from (`source`: config, gpus-file, podresources, CUDA_VISIBLE_DEVICES,
    NVIDIA_VISIBLE_DEVICES, all, only-gpu, or unresolved with the `reason`)."""

    items: tuple[str, ...] = ()
    source: str = "all"
    reason: str = ""

    @classmethod
    def parse(cls, text: str, source: str = "config") -> "Selection":
        text = (text or "all").strip()
        if text.lower() == "all":
            return cls(())
        items = tuple(p.strip() for p in text.replace(",", " ").split())
        if not items:
            raise ValueError(f"empty GPU selection {text!r}")
        return cls(items, source)

    @classmethod
    def from_environment(cls, explicit: str, environ=os.environ) -> "Selection":
        """The explicit selection if given, else CUDA_VISIBLE_DEVICES, else NVIDIA_VISIBLE_DEVICES."""
        if explicit and explicit.strip().lower() != "all":
            return cls.parse(explicit)
        for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
            value = environ.get(var)
            if value is None or value.strip().lower() in ("", "all"):
                continue
            if value.strip().lower() in ("none", "void", "-1"):
                raise ValueError(f"{var}={value!r} makes no GPU visible")
            selection = cls.parse(value, var)
            if (var == "CUDA_VISIBLE_DEVICES" and environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID"
                    and any(item.isdigit() for item in selection.items)):
                log.warning("CUDA_VISIBLE_DEVICES=%s holds indices in CUDA's order, which matches NVML's only "
                            "with CUDA_DEVICE_ORDER=PCI_BUS_ID; prefer UUIDs", value)
            return selection
        return cls(())

    @classmethod
    def from_file(cls, path: str) -> "Selection":
        """The GPUs listed in the file at `path`, written by the inference server's container: UUIDs
        (or indices) separated by commas, spaces or newlines, as `nvidia-smi --query-gpu=uuid
        --format=csv,noheader` prints them; unresolved while the file is missing or empty."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read().strip()
        except OSError as e:
            return cls.unresolved(f"no GPUs file yet ({path}: {e.strerror})")
        selection = cls.parse(text, "gpus-file") if text else cls()
        if not selection.items:
            return cls.unresolved(f"the GPUs file {path} names no GPU ({text!r}): it takes the UUIDs the "
                                  "server sees, as `nvidia-smi --query-gpu=uuid --format=csv,noheader` prints them")
        return selection

    @classmethod
    def unresolved(cls, reason: str) -> "Selection":
        return cls((), UNRESOLVED, reason)

    @classmethod
    def discover(cls, explicit: str, pod: str = "", socket_path: str = "", gpus_file: str = "",
                 environ=os.environ) -> "Selection":
        """The GPUs of this exporter, in order of preference: the explicit selection; the GPUs file;
        the GPUs the kubelet's PodResources API assigns to pod `namespace/name` (when `pod` and the
        socket are given); CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES naming GPUs; all. With a
        GPUs file or a pod, "all" is not an answer: the selection is then unresolved, with the reason."""
        if explicit and explicit.strip().lower() != "all":
            return cls.parse(explicit)
        if gpus_file:
            return cls.from_file(gpus_file)
        if pod:
            from jouletrace.exporter.kubernetes.podresources import PodResourcesError, pod_gpu_ids

            namespace, _, name = pod.rpartition("/")
            try:
                ids = pod_gpu_ids(socket_path, namespace, name)
            except PodResourcesError as e:
                reason = str(e)
            else:
                if ids:
                    return cls(tuple(ids), "podresources")
                reason = f"the kubelet lists no GPU for pod {pod}"
            environment = cls.from_environment("all", environ)
            return environment if environment.items else cls.unresolved(reason)
        return cls.from_environment("all", environ)

    def resolve(self, devices: list[tuple[int, str]]) -> "Selection":
        """This selection for the GPUs visible, `devices` as (index, uuid): an unresolved one takes
        the only GPU visible, and stays unresolved where several are (none is sampled)."""
        if self.source == UNRESOLVED and len(devices) == 1:
            return Selection((devices[0][1],), ONLY_GPU, self.reason)
        return self

    def choose(self, devices: list[tuple[int, str]]) -> list[int]:
        """Indices chosen among `devices`, given as (index, uuid); unknown items raise ValueError."""
        if not self.items:
            return [i for i, _ in devices]
        chosen: list[int] = []
        for item in self.items:
            if item.isdigit():
                match = [i for i, _ in devices if i == int(item)]
            else:
                match = [i for i, uuid in devices if uuid.lower().startswith(item.lower())]
            if len(match) != 1:
                known = ", ".join(f"{i}:{u}" for i, u in devices) or "none"
                raise ValueError(f"GPU {item!r} matches {len(match)} devices (present: {known})")
            if match[0] not in chosen:
                chosen.append(match[0])
        return chosen
