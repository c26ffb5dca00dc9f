"""The exporter's energy against an independent reading of the NVML energy counter, idle and loaded."""

import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
from nvml_reference import counter_edge  # noqa: E402

from jouletrace.exporter.gpu.device import Selection
from jouletrace.exporter.gpu.nvml import open_devices
from jouletrace.exporter.gpu.sampler import COUNTER, GPUSampler

LOAD = pathlib.Path(__file__).with_name("load.py")



@pytest.fixture(scope="module")
def sampling():
    dev = open_devices(Selection.parse("0"))[0]
    sampler = GPUSampler(dev)
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(stop,), daemon=True)
    thread.start()
    yield dev, sampler
    stop.set()
    thread.join()


def window_energy(sampler, dev, seconds: float) -> tuple[float, float]:
    """(exporter energy, independent counter delta) over a window of `seconds`."""
    t0, e0 = counter_edge(dev._handle)
    time.sleep(seconds)
    t1, e1 = counter_edge(dev._handle)
    deadline = time.time() + 15
    while time.time() < deadline:
        with sampler.lock:
            if sampler.timeline.settled_until > t1:
                return sampler.timeline.energy(t0, t1), e1 - e0
        time.sleep(0.1)
    pytest.fail("timeline did not settle past the window")


def test_idle_window_matches_the_counter(sampling):
    dev, sampler = sampling
    time.sleep(6.0)  # first settlement
    ours, counter = window_energy(sampler, dev, 10.0)
    assert sampler.method == COUNTER and sampler.healthy
    assert counter > 0
    assert ours == pytest.approx(counter, rel=0.005)


def test_loaded_window_matches_the_counter(sampling):
    dev, sampler = sampling
    load = subprocess.Popen([sys.executable, str(LOAD), "16"], env=dict(os.environ))
    try:
        time.sleep(4.0)  # let the load ramp up
        ours, counter = window_energy(sampler, dev, 10.0)
    finally:
        load.wait(timeout=60)
    assert counter / 10.0 > 200.0, "the load did not raise power"
    assert ours == pytest.approx(counter, rel=0.005)


def test_status_reads_on_a_real_gpu(sampling):
    dev, sampler = sampling
    st = dev.status()
    time.sleep(1.0)
    st = dev.status()  # GPM needs two samples
    assert 100.0 <= st.power_limit_w <= 1500.0
    assert st.sm_clock_hz > 1e8
    assert 0.0 <= st.utilization <= 1.0
    assert 0 < st.memory_used_bytes < st.memory_total_bytes
    assert 0.0 < st.temperature_c < 110.0
    assert "sw_power_cap" in st.clocks_event_reasons
    for ratio in (st.sm_occupancy, st.tensor_activity, st.dram_bandwidth_utilization):
        assert ratio is None or 0.0 <= ratio <= 1.0
    assert sampler.errors == {} or all(code == "not_supported" for _, code in sampler.errors)
