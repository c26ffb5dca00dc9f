"""Tests on a real NVIDIA GPU; skipped where NVML is absent (as in CI)."""

import pytest


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _nvml_works():
        return
    skip = pytest.mark.skip(reason="no NVIDIA GPU reachable through NVML")
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(skip)
