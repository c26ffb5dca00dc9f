"""Opening the configured GPU backend: NVML, the simulated GPU, or a shared simulated-device file.

The factory sits above the backends: each backend imports only the interface (`device`).
"""

from __future__ import annotations

import logging

from jouletrace.exporter.gpu import devicefile, nvml, simulated
from jouletrace.exporter.gpu.device import BackendUnavailable, GPUDevice, Selection

log = logging.getLogger(__name__)


def open_devices(backend: str, selection: Selection, *, sim_options: dict | None = None,
                 sim_device_file: str = "") -> list[GPUDevice]:
    """Open the selected GPUs of `backend` ("auto", "nvml" or "sim").

    `auto` uses NVML wherever the NVIDIA library is present and raises if it is present but
    broken; only where no NVIDIA driver exists at all does it fall back to the simulated GPU.
    Simulated GPUs are the slots of `sim_device_file` where given (as many as sim_options' count).
    """
    if backend in ("auto", "nvml"):
        try:
            return nvml.open_devices(selection)
        except BackendUnavailable as exc:
            if backend == "nvml":
                raise
            log.warning("no NVIDIA driver found (%s): using SIMULATED GPUs; every GPU series carries backend=\"sim\"", exc)
    elif backend != "sim":
        raise ValueError(f"unknown GPU backend {backend!r} (auto, nvml, sim)")
    else:
        log.warning("using SIMULATED GPUs as asked; every GPU series carries backend=\"sim\"")
    sim_options = sim_options or {}
    if sim_device_file:
        return devicefile.open_devices(sim_device_file, selection, count=sim_options.get("count", 1))
    return simulated.open_devices(selection, **sim_options)
