"""Label names several collectors share, and their values."""

from __future__ import annotations

from typing import Iterable

from jouletrace.exporter.gpu.device import GPUDevice
from jouletrace.exporter.gpu.sampler import GPUSampler

GPU_LABELS = ("gpu", "uuid", "backend")
# energy-valued series carry the backend too, so simulated joules never pass for measured ones
MODEL_LABELS = ("model", "backend")


def gpu_label_values(device: GPUDevice) -> list[str]:
    """GPU_LABELS' values: the device's index, UUID and backend."""
    return [str(device.index), device.uuid, device.backend]


def backend(samplers: Iterable[GPUSampler]) -> str:
    """The sampled GPUs' backends, comma-separated (`none` without GPUs)."""
    return ",".join(sorted({s.device.backend for s in samplers})) or "none"
