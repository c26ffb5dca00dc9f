"""The window-energy API over the timelines of simulated GPUs."""

import pytest
from rig import Rig

from jouletrace.exporter.sinks.energy_api import NotYetSettled, OutOfRetention, window_energy


def test_window_energy_matches_the_meter(clock):
    rig = Rig(clock, gpus=2, load=0.5)
    rig.run(30.0)
    t0 = rig.t0 + 5.0
    out = window_energy(rig.samplers, t0, t0 + 20.0)
    assert [g["index"] for g in out["gpus"]] == [0, 1]
    assert {g["backend"] for g in out["gpus"]} == {"sim"}
    for g, dev in zip(out["gpus"], rig.devices):
        assert g["joules"] == pytest.approx(dev.true_energy_j(t0 + 20) - dev.true_energy_j(t0), rel=0.01)
    assert out["joules"] == pytest.approx(sum(g["joules"] for g in out["gpus"]))
    with pytest.raises(NotYetSettled):
        window_energy(rig.samplers, t0, clock.t + 5.0)
    with pytest.raises(OutOfRetention):
        window_energy(rig.samplers, rig.t0 - 100.0, t0)


def test_the_exporter_serves_window_energy():
    import json
    import time

    from servers import ExporterProcess, http_get, wait_for

    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.6", "--counter-interval", "1")
    try:
        now = time.time()
        status, body = http_get(exporter.url(f"/api/v1/energy?start={now}&end={now + 2}"))
        assert status == 503 and "retry" in body
        assert http_get(exporter.url("/api/v1/energy?start=5&end=1"))[0] == 400
        assert http_get(exporter.url(f"/api/v1/energy?start={now - 3600}&end={now}"))[0] == 416
        answer = wait_for(lambda: (lambda r: r[0] == 200 and json.loads(r[1]))(
            http_get(exporter.url(f"/api/v1/energy?start={now}&end={now + 2}"))), 20, "the window to settle")
    finally:
        exporter.stop()
    assert answer["gpus"][0]["backend"] == "sim" and answer["gpus"][0]["method"] == "counter"
    assert answer["joules"] == pytest.approx(2 * (75 + 0.6 * 625), rel=0.1)
