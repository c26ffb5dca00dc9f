"""NVML faults through the real backend: exporter/gpu/nvml.py's NVMLDevice under the sampler (and the
ledger), with the driver's errors raised as the real pynvml.NVMLError_* exceptions and per-field
return codes. No GPU exists where these tests run, so `SimNVML` (simnvml.py) answers pynvml's
driver calls from simulated GPUs, whose true energy each test compares against."""

import pynvml
import pytest
from rig import Rig, run_sampler
from simnvml import ENERGY_FIELD, POWER_FIELD, STATUS_CALLS, SimNVML

from jouletrace.exporter.gpu import nvml
from jouletrace.exporter.gpu.device import Selection
from jouletrace.exporter.gpu.sampler import COUNTER, POWER_INTEGRAL, GPUSampler
from jouletrace.exporter.gpu.simulated import SimulatedGPU, wave_load


def open_nvml(monkeypatch, clock, count: int = 1) -> tuple[SimNVML, list[nvml.NVMLDevice]]:
    gpus = [SimulatedGPU(i, seed=5, load=lambda t: wave_load(t, 20.0), clock=clock) for i in range(count)]
    driver = SimNVML(gpus).install(monkeypatch)
    return driver, nvml.open_devices(Selection())


def open_sampler(monkeypatch, clock) -> tuple[SimNVML, GPUSampler]:
    driver, (device,) = open_nvml(monkeypatch, clock)
    return driver, GPUSampler(device, clock=clock, counter_interval_s=2.0)


def true_total_j(gpu: SimulatedGPU, sampler: GPUSampler) -> float:
    """What a perfect meter says over the sampler's settled timeline."""
    tl = sampler.timeline
    return gpu.true_energy_j(tl.settled_until) - gpu.true_energy_j(tl.origin)


def test_a_gpu_that_falls_off_the_bus_and_comes_back(monkeypatch, clock):
    """GPU 1 is lost for 6 s while a request runs on both GPUs: GPU 0 carries on, GPU 1 is retried and
    picked up again, its counter covers the outage exactly, and the ledger conserves both GPUs' energy."""
    driver, devices = open_nvml(monkeypatch, clock, count=2)
    rig = Rig(clock, devices=devices, settle_delay_s=25.0)
    samplers = rig.samplers
    rig.run(8.0)
    driver.lost.add(1)
    rig.run(6.0)
    lost_gpu, other = samplers[1], samplers[0]
    assert not lost_gpu.healthy and other.healthy
    assert lost_gpu.errors[("power", "gpu_lost")] == 1  # the read that found it gone
    assert lost_gpu.errors[("reopen", "not_found")] >= 4  # then retried about every second
    assert not other.errors
    driver.lost.clear()
    rig.run(8.5)
    rig.submit([rig.request(2.0, 20.0, rid="through-the-outage")])  # its span arrives once it has ended
    rig.run(30.0)
    assert lost_gpu.healthy and lost_gpu.counter_resets == lost_gpu.counter_rejected == 0
    for gpu, sampler in zip(driver.gpus, samplers):
        assert sampler.timeline.total_j == pytest.approx(true_total_j(gpu, sampler), abs=0.002)
    # GPU 1's outage energy reached the request once GPU 1 answered again: nothing lost, nothing doubled
    assert rig.models()["m"].requests == 1
    assert rig.attributed_j() + rig.idle_j() == pytest.approx(rig.measured_j(), rel=1e-9)
    assert rig.attributed_j() == pytest.approx(sum(g.attributed_j for g in rig.ledger.gpus), rel=1e-9)
    assert rig.attributed_j() == pytest.approx(sum(s.timeline.energy(rig.t0 + 2.0, rig.t0 + 22.0) for s in samplers),
                                               rel=1e-9)


@pytest.mark.parametrize("error, code", [(pynvml.NVML_ERROR_TIMEOUT, "timeout"),
                                         (pynvml.NVML_ERROR_UNKNOWN, "nvml_999"),
                                         (pynvml.NVML_ERROR_NO_PERMISSION, "no_permission")])
def test_counter_read_errors_mark_the_gpu_down_and_lose_nothing(monkeypatch, clock, error, code):
    driver, sampler = open_sampler(monkeypatch, clock)
    run_sampler(sampler, clock, 5.0)
    driver.field_errors[ENERGY_FIELD] = error
    run_sampler(sampler, clock, 4.0)
    assert not sampler.healthy
    assert sampler.errors[("energy", code)] >= 3  # retried every second while it fails
    driver.field_errors.clear()
    run_sampler(sampler, clock, 5.0)
    assert sampler.healthy and sampler.method == COUNTER
    assert sampler.timeline.total_j == pytest.approx(true_total_j(driver.gpus[0], sampler), abs=0.002)


def test_status_read_errors_are_counted_and_the_energy_goes_on(monkeypatch, clock):
    driver, sampler = open_sampler(monkeypatch, clock)
    run_sampler(sampler, clock, 3.0)
    assert sampler.status.temperature_c is not None
    driver.errors["nvmlDeviceGetTemperature"] = pynvml.NVML_ERROR_UNKNOWN
    run_sampler(sampler, clock, 10.0)
    assert sampler.healthy
    assert sampler.errors[("temperature", "nvml_999")] >= 9  # one per status read, every second
    assert sampler.status.temperature_c is None  # unknown, not a stale value
    assert sampler.counter_reads >= 6
    assert sampler.timeline.total_j == pytest.approx(true_total_j(driver.gpus[0], sampler), abs=0.002)


def test_status_fields_and_instant_power_not_supported(monkeypatch, clock):
    driver, sampler = open_sampler(monkeypatch, clock)
    for call in STATUS_CALLS:
        driver.errors[call] = pynvml.NVML_ERROR_NOT_SUPPORTED
    driver.field_errors[POWER_FIELD] = pynvml.NVML_ERROR_NOT_SUPPORTED
    run_sampler(sampler, clock, 10.0)
    assert sampler.healthy and sampler.method == COUNTER and not sampler.errors
    st = sampler.status
    assert (st.power_limit_w, st.sm_clock_hz, st.utilization, st.memory_used_bytes, st.temperature_c,
            st.clocks_event_reasons) == (None, None, None, None, None, {})
    assert sampler.power_w == pytest.approx(driver.gpus[0].power_w()[0], abs=1e-3)  # the averaged reading
    assert sampler.timeline.total_j == pytest.approx(true_total_j(driver.gpus[0], sampler), abs=0.002)


def test_no_energy_counter_integrates_power(monkeypatch, clock):
    driver, sampler = open_sampler(monkeypatch, clock)
    driver.field_errors[ENERGY_FIELD] = pynvml.NVML_ERROR_NOT_SUPPORTED
    run_sampler(sampler, clock, 20.0)
    assert sampler.healthy and sampler.method == POWER_INTEGRAL and not sampler.errors
    assert sampler.timeline.total_j == pytest.approx(true_total_j(driver.gpus[0], sampler), rel=0.01)


def test_no_power_reading_spreads_the_counter_evenly(monkeypatch, clock):
    driver, sampler = open_sampler(monkeypatch, clock)
    driver.field_errors[POWER_FIELD] = pynvml.NVML_ERROR_NOT_SUPPORTED
    driver.errors["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    run_sampler(sampler, clock, 20.0)
    assert sampler.healthy and sampler.method == COUNTER and not sampler.has_power and not sampler.errors
    assert sampler.power_w is None
    tl = sampler.timeline
    assert tl.total_j == pytest.approx(true_total_j(driver.gpus[0], sampler), abs=0.002)
    # within the last counter interval (2 s or a step longer) the energy is spread evenly in time
    end = tl.settled_until
    assert tl.energy(end - 1.0, end - 0.75) == pytest.approx(tl.energy(end - 0.5, end - 0.25), rel=1e-9)


def test_neither_counter_nor_power_reads_as_down(monkeypatch, clock):
    driver, sampler = open_sampler(monkeypatch, clock)
    driver.field_errors[POWER_FIELD] = driver.field_errors[ENERGY_FIELD] = pynvml.NVML_ERROR_NOT_SUPPORTED
    driver.errors["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    run_sampler(sampler, clock, 5.0)
    assert not sampler.healthy and not sampler.timeline.started
    assert sampler.errors[("energy", "not_supported")] >= 4


def test_driver_reload_restarts_the_counter(monkeypatch, clock):
    """The GPU is lost, then comes back with its counter restarted from zero: the reset is counted, the
    outage is integrated from power, never negative and never doubled, and the counter rules again."""
    driver, sampler = open_sampler(monkeypatch, clock)
    gpu = driver.gpus[0]
    run_sampler(sampler, clock, 10.0)
    driver.lost.add(0)
    run_sampler(sampler, clock, 3.0)
    before, since = sampler.timeline.total_j, sampler.timeline.settled_until
    gpu.reset_counter()
    driver.lost.clear()
    run_sampler(sampler, clock, 10.0)
    assert sampler.healthy and sampler.counter_resets == 1 and sampler.counter_rejected == 0
    tl = sampler.timeline
    assert tl.total_j - before == pytest.approx(gpu.true_energy_j(tl.settled_until) - gpu.true_energy_j(since),
                                                rel=0.05)
    assert tl.energy(tl.settled_until - 6.0, tl.settled_until) == pytest.approx(
        gpu.true_energy_j(tl.settled_until) - gpu.true_energy_j(tl.settled_until - 6.0), rel=1e-3)
