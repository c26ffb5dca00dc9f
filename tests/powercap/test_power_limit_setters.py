"""The power-limit setter of each backend. NVML's runs only against a fake NVML: no test changes
a real GPU's settings."""

import pynvml
import pytest
from test_gpu_backends import FakeNVML

from jouletrace.exporter.gpu import backends, device as gpu
from jouletrace.exporter.gpu.devicefile import DeviceFile, FileGPU
from jouletrace.exporter.gpu.device import GPUDevice, GPUError, NotSupported, Selection
from jouletrace.exporter.gpu.simulated import TICK_S, SimulatedGPU
from jouletrace.simulator.gpus import install_gpus


class FakeSettableNVML(FakeNVML):
    """FakeNVML with the power-limit calls of an H100 (200-700 W); records what is set, in mW."""

    def __init__(self):
        super().__init__()
        self.set_calls = []
        self.set_error = None
        self.limit_mw = 700_000

    def install(self, monkeypatch):
        super().install(monkeypatch)
        for name in ("nvmlDeviceGetPowerManagementLimitConstraints", "nvmlDeviceGetPowerManagementLimit",
                     "nvmlDeviceSetPowerManagementLimit"):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h):
        return [200_000, 700_000]

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return self.limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, h, limit_mw):
        if self.set_error is not None:
            raise pynvml.NVMLError(self.set_error)
        self.set_calls.append((h, limit_mw))
        self.limit_mw = limit_mw


def test_nvml_sets_the_limit_in_milliwatts_within_its_constraints(monkeypatch):
    fake = FakeSettableNVML()
    fake.install(monkeypatch)
    dev = backends.open_devices("nvml", Selection.parse("1"))[0]
    assert dev.power_limit_constraints_w() == (200.0, 700.0)
    assert dev.power_limit_w() == 700.0
    dev.set_power_limit_w(450.5)
    assert fake.set_calls == [(1, 450_500)]
    assert isinstance(fake.set_calls[0][1], int)
    assert dev.power_limit_w() == 450.5
    fake.set_error = pynvml.NVML_ERROR_NO_PERMISSION
    with pytest.raises(GPUError) as err:
        dev.set_power_limit_w(400.0)
    assert (err.value.call, err.value.code) == ("set_power_limit", "no_permission")
    fake.set_error = pynvml.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(NotSupported):
        dev.set_power_limit_w(400.0)


def test_a_device_without_power_control_says_not_supported():
    class Bare(GPUDevice):
        def energy_mj(self):
            return 0, None

        def power_w(self):
            return 0.0, None

        def status(self):
            return gpu.GPUStatus()

    with pytest.raises(NotSupported):
        Bare().set_power_limit_w(300.0)
    with pytest.raises(NotSupported):
        Bare().power_limit_constraints_w()
    with pytest.raises(NotSupported):
        Bare().power_limit_w()


def test_simulated_gpu_caps_from_the_next_tick_and_keeps_energy_exact(clock):
    clock.t = 1_800_000_000.05  # mid-tick
    dev = SimulatedGPU(0, load=1.0, noise=0.0, clock=clock)
    assert dev.power_limit_constraints_w() == (200.0, 700.0)
    start_j = dev.energy_mj()[0] / 1000
    clock.advance(1.0)
    dev.set_power_limit_w(300.0)
    assert dev.power_limit_w() == 300.0
    assert dev.power_w()[0] == 700.0 and dev.status().power_limit_w == 700.0  # this tick: the old limit
    clock.advance(TICK_S)
    assert dev.power_w()[0] == 300.0
    st = dev.status()
    assert st.power_limit_w == 300.0 and st.clocks_event_reasons["sw_power_cap"]
    clock.advance(2.0)
    measured = dev.energy_mj()[0] / 1000 - start_j
    assert measured == pytest.approx(dev.true_energy_j(clock.t) - dev.true_energy_j(clock.t - 3.1), abs=1e-3)
    assert measured == pytest.approx(700.0 * 1.05 + 300.0 * 2.05, abs=1e-3)  # the change at the tick boundary
    with pytest.raises(GPUError) as err:
        dev.set_power_limit_w(150.0)
    assert err.value.code == "invalid_argument"


def test_file_gpu_requests_the_limit_in_the_device_file(tmp_path):
    path = tmp_path / "gpu.dev"
    missing = FileGPU(str(path), 0)
    with pytest.raises(GPUError) as err:
        missing.set_power_limit_w(400.0)
    assert err.value.code == "gpu_lost"
    install_gpus(path)
    dev = FileGPU(str(path), 0, stale_s=0.0)  # no engine writes readings: the limit is the file's
    assert dev.power_limit_constraints_w() == (200.0, 700.0) and dev.power_limit_w() == 700.0
    dev.set_power_limit_w(450.0)
    with DeviceFile.open(str(path)) as f:
        assert f.requested_power_limit(0) == 450.0
    assert dev.power_limit_w() == 450.0
    with pytest.raises(GPUError) as err:
        dev.set_power_limit_w(701.0)
    assert err.value.code == "invalid_argument" and "outside" in str(err.value)
