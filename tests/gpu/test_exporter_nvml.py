"""The whole exporter on a real GPU: `jouletrace exporter --gpu nvml` serves measured series."""

import re
import time

import pytest
from servers import ExporterProcess, http_get


def series(text: str, name: str) -> list[tuple[str, float]]:
    return [(m.group(1), float(m.group(2))) for m in re.finditer(rf"^{name}{{(.*)}} (\S+)$", text, re.M)]


def test_exporter_serves_measured_energy():
    exporter = ExporterProcess("--gpu", "nvml", "--gpus", "0", "--counter-interval", "1")
    try:
        time.sleep(3.0)
        first = http_get(exporter.url("/metrics"))[1]
        time.sleep(5.0)
        second = http_get(exporter.url("/metrics"))[1]
    finally:
        assert exporter.stop() == 0, exporter.output()
    (labels, e1), = series(first, "jouletrace_gpu_energy_joules_total")
    (_, e2), = series(second, "jouletrace_gpu_energy_joules_total")
    assert 'backend="nvml"' in labels and 'method="counter"' in labels
    (_, power), = series(second, "jouletrace_gpu_power_watts")
    assert 30.0 < power < 1500.0
    assert 30.0 * 4 < e2 - e1 < 1500.0 * 6  # about 5 s of a real GPU's power
    (_, up), = series(second, "jouletrace_gpu_up")
    assert up == 1.0
    (_, limit), = series(second, "jouletrace_gpu_power_limit_watts")
    assert limit >= 100.0
    assert "SIMULATED" not in exporter.output()
    assert series(second, "jouletrace_gpu_read_errors_total") == [] or all(
        v == 0 or "not_supported" in lab for lab, v in series(second, "jouletrace_gpu_read_errors_total"))


pytestmark = pytest.mark.gpu
