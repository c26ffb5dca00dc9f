"""The load generator's own NVML energy source (used when no exporter is given) against an
independent reading of the energy counter, idle and loaded."""

import os
import pathlib
import subprocess
import sys
import time

import pynvml
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
from nvml_reference import counter_edge  # noqa: E402

from jouletrace.loadgen.energy import NvmlEnergy

LOAD = pathlib.Path(__file__).with_name("load.py")


def measured(seconds: float) -> tuple[float, float]:
    """(NvmlEnergy's joules on GPU 0, the counter's delta) over one window of `seconds`."""
    source = NvmlEnergy(period_s=0.5)
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    source.start()
    try:
        time.sleep(1.0)
        t0, e0 = counter_edge(handle)
        time.sleep(seconds)
        t1, e1 = counter_edge(handle)
        time.sleep(1.0)
    finally:
        source.stop()
    gpu0 = next(g for g in source.window(t0, t1)["gpus"] if g["index"] == 0)
    assert gpu0["backend"] == "nvml" and gpu0["method"] == "counter"
    return gpu0["joules"], e1 - e0


def test_idle_window_matches_the_counter():
    ours, counter = measured(10.0)
    assert counter > 0
    assert ours == pytest.approx(counter, rel=0.02)


def test_loaded_window_matches_the_counter():
    load = subprocess.Popen([sys.executable, str(LOAD), "16"], env=dict(os.environ))
    try:
        time.sleep(3.0)
        ours, counter = measured(10.0)
    finally:
        load.wait(timeout=60)
    assert counter / 10.0 > 200.0, "the load did not raise power"
    assert ours == pytest.approx(counter, rel=0.02)
