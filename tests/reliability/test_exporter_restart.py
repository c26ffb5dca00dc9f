"""The exporter killed mid-run (SIGKILL, or SIGTERM's graceful stop) and restarted on the same ports
while its GPU keeps drawing power and a request runs across the restart; and a GPU that disappears
from a running exporter and comes back with its counter restarted.

The GPU is a device-file GPU drawing a constant 300 W whose counter started long before either
exporter (5 MJ), so the device's truth is known at every instant. The restarted exporter's
counters start again from zero (a Prometheus counter reset), it measures and attributes only
time after its own start, and what both processes counted together never exceeds the truth."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from servers import ExporterProcess, http_get, sum_samples, wait_for

from jouletrace.exporter.gpu.devicefile import DeviceFile, Reading, SlotSpec

POWER_W = 300.0
GPU = SlotSpec("GPU-5100bbbb-0000-4000-8000-000000000000", "Simulated H100", 80 << 30, 200.0, 700.0)


class ConstantPowerGPU:
    """A stand-in engine publishing one GPU at POWER_W to the device file at `path` every 50 ms."""

    def __init__(self, path: str, counter_j: float = 5e6):
        self.file = DeviceFile.create(path, [GPU])
        self.t0, self.counter_j = time.time(), counter_j
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._publish, daemon=True)
        self._thread.start()

    def energy_j(self, t: float) -> float:
        """The counter at Unix time `t` (J)."""
        return self.counter_j + POWER_W * (t - self.t0)

    def _publish(self) -> None:
        while not self._stop.wait(0.05):
            t = time.time()
            self.file.write(0, Reading(t, self.energy_j(t), POWER_W, 700.0))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.file.close()


def finished_span(model: str, start: float, end: float):
    """A finished request span of `model` (its service name) that ran from `start` to `end` (Unix s)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": model}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    span = provider.get_tracer("restart-test").start_span(
        "llm_request", start_time=round(start * 1e9),
        attributes={"gen_ai.request.id": model, "gen_ai.usage.prompt_tokens": 10, "gen_ai.usage.completion_tokens": 20})
    span.end(end_time=round(end * 1e9))
    return memory.get_finished_spans()[0]


def export(exporter: ExporterProcess, spans) -> None:
    sdk = OTLPSpanExporter(endpoint=f"127.0.0.1:{exporter.grpc_port}", insecure=True, timeout=10)
    assert sdk.export(spans) == SpanExportResult.SUCCESS
    sdk.shutdown()


def metric(exporter: ExporterProcess, name: str, **labels: str) -> float:
    return sum_samples(http_get(exporter.url("/metrics"))[1], name, **labels)


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_restart_counts_no_joule_twice(tmp_path, sig):
    gpu = ConstantPowerGPU(str(tmp_path / "gpus"))
    args = ("--gpu", "sim", "--sim-device-file", str(tmp_path / "gpus"), "--counter-interval", "0.5",
            "--settle-delay", "3")
    started = time.time()
    first = ExporterProcess(*args, "--shutdown-scrape-wait", "10")
    second = None
    try:
        ran = time.time()
        sleep_until(ran + 1.0)
        before = finished_span("before", ran, ran + 1.0)
        export(first, [before])
        wait_for(lambda: metric(first, "jouletrace_model_requests_total", model="before") == 1, 20,
                 "the first exporter to attribute the request")
        assert metric(first, "jouletrace_model_energy_joules_total", model="before") == pytest.approx(POWER_W, abs=1)
        straddle_start = time.time() - 0.5  # a request running while the exporter stops
        stopped = time.time()
        if sig == signal.SIGKILL:
            text = http_get(first.url("/metrics"))[1]  # the last scrape before the kill
            first.proc.send_signal(sig)
            assert first.proc.wait(15) == -signal.SIGKILL
        else:
            first.proc.send_signal(sig)
            wait_for(lambda: "final attribution done" in first.output(), 10, "the final attribution")
            text = http_get(first.url("/metrics"))[1]  # the final scrape
            assert first.proc.wait(15) == 0
        first_energy = sum_samples(text, "jouletrace_gpu_energy_joules_total")
        first_attributed = sum_samples(text, "jouletrace_model_energy_joules_total")
        assert first_energy > 0

        launched = time.time()
        second = ExporterProcess(*args, ports=first.ports)
        ready = time.time()
        # the counter starts again from zero: only the second exporter's own time, never the device's 5 MJ
        assert metric(second, "jouletrace_gpu_energy_joules_total") <= POWER_W * (time.time() - launched)
        sleep_until(ready + 1.7)
        # the earlier span again (an exporter's retry), the request that ran across the restart, one after it
        export(second, [before, finished_span("straddle", straddle_start, ready + 0.5),
                        finished_span("after", ready + 0.6, ready + 1.6)])
        wait_for(lambda: metric(second, "jouletrace_model_requests_total") == 3, 20, "three requests completed")
        text = http_get(second.url("/metrics"))[1]
        energy = {m: sum_samples(text, "jouletrace_model_energy_joules_total", model=m)
                  for m in ("before", "straddle", "after")}
        assert energy["before"] == 0 and sum_samples(text, "jouletrace_spans_late_total", part="whole") == 1
        assert POWER_W * 0.5 <= energy["straddle"] <= POWER_W * (ready + 0.5 - launched)
        assert energy["after"] == pytest.approx(POWER_W * 1.0, abs=1)

        # the device's truth over a window the second exporter measured; none before it started
        status, body = http_get(second.url(f"/api/v1/energy?start={ready + 0.6}&end={ready + 1.6}"))
        assert status == 200 and json.loads(body)["joules"] == pytest.approx(POWER_W, abs=0.01)
        assert http_get(second.url(f"/api/v1/energy?start={launched - 0.5}&end={ready}"))[0] == 416

        # what Prometheus sums across the reset: never more than the device spent since the first start;
        # unmeasured are only the starts, the restart and the last counter interval
        now = time.time()
        second_energy = metric(second, "jouletrace_gpu_energy_joules_total")
        true = gpu.energy_j(now) - gpu.energy_j(started)
        assert true - POWER_W * ((ran - started) + (ready - stopped) + 1.0) <= first_energy + second_energy <= true
        assert first_attributed + sum(energy.values()) <= first_energy + second_energy
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0, second.output()
        gpu.stop()


def test_a_gpu_that_disappears_and_comes_back_with_a_restarted_counter(tmp_path):
    path = str(tmp_path / "gpus")
    gpu = ConstantPowerGPU(path)
    exporter = ExporterProcess("--gpu", "sim", "--sim-device-file", path, "--counter-interval", "0.5")
    try:
        wait_for(lambda: metric(exporter, "jouletrace_gpu_energy_joules_total") > 0, 10, "energy")
        assert metric(exporter, "jouletrace_gpu_up") == 1
        gpu.stop()
        os.unlink(path)  # the engine and its GPUs are gone
        wait_for(lambda: metric(exporter, "jouletrace_gpu_up") == 0, 10, "the GPU marked down")
        assert metric(exporter, "jouletrace_gpu_read_errors_total", code="gpu_lost") >= 1
        gpu = ConstantPowerGPU(path, counter_j=0.0)  # a new engine: its counter starts from zero
        wait_for(lambda: metric(exporter, "jouletrace_gpu_up") == 1, 10, "the GPU picked up again")
        wait_for(lambda: metric(exporter, "jouletrace_gpu_energy_resets_total") == 1, 10, "the counter reset")
        back = time.time()  # picked up by now, however busy the machine: the window below is all after it
        url = exporter.url(f"/api/v1/energy?start={back + 1.0}&end={back + 2.0}")
        wait_for(lambda: http_get(url)[0] == 200, 10, "the window settled")
        assert json.loads(http_get(url)[1])["joules"] == pytest.approx(POWER_W, abs=0.01)
        assert metric(exporter, "jouletrace_gpu_energy_jumps_rejected_total") == 0
    finally:
        assert exporter.stop() == 0, exporter.output()
        gpu.stop()
