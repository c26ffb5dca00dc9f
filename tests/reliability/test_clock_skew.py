"""A sender whose clock is ahead of the exporter's, measured from its spans and corrected; one behind,
reported. Spans sent by the OpenTelemetry SDK's OTLP/gRPC exporter to a running exporter."""

from __future__ import annotations

import time

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from span_load import sdk_span
from servers import ExporterProcess, http_get, sum_samples, wait_for


def send(exporter: ExporterProcess, model: str, skew_s: float, n: int, first: int) -> None:
    """`n` request spans that end now, on a clock `skew_s` seconds ahead of this one."""
    out = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{exporter.grpc_port}", insecure=True)
    now = time.time_ns() + int(skew_s * 1e9)
    out.export([sdk_span(first + i, now - i * 100_000_000, {"service.name": model}) for i in range(n)])
    out.shutdown()


@pytest.fixture
def exporter():
    e = ExporterProcess("--gpu", "sim", "--sim-load", "0.5", "--settle-delay", "3", "--counter-interval", "1")
    yield e
    e.stop()


def test_skewed_senders_are_measured_and_a_clock_ahead_is_corrected(exporter):
    metrics = lambda: http_get(exporter.url("/metrics"))[1]  # noqa: E731
    wait_for(lambda: http_get(exporter.url("/readyz"))[0] == 200, 15, "the first energy reading")
    time.sleep(3.0)  # the behind sender's spans fall after it
    send(exporter, "ahead", 40.0, 5, 0)     # uncorrected, these would wait 40 s for their end
    send(exporter, "behind", -2.0, 5, 100)  # within the settle delay: on time, reported
    send(exporter, "on-time", 0.0, 5, 200)
    text = wait_for(lambda: (t := metrics()) and sum_samples(t, "jouletrace_model_requests_total") == 15 and t, 20,
                    "15 requests attributed")
    assert sum_samples(text, "jouletrace_spans_clock_corrected_total") == 5
    offset = {m: sum_samples(text, "jouletrace_span_clock_offset_seconds", model=m) for m in ("ahead", "behind", "on-time")}
    assert offset["ahead"] == pytest.approx(-40.0, abs=1.0)
    assert offset["behind"] == pytest.approx(2.0, abs=1.0) and abs(offset["on-time"]) < 1.0
    energy = {m: sum_samples(text, "jouletrace_model_energy_joules_total", model=m) for m in offset}
    assert energy["ahead"] > 0 and energy["behind"] > 0 and energy["on-time"] > 0
    assert sum_samples(text, "jouletrace_spans_late_total") == 0
