"""Graceful stop: SIGTERM closes the span intake, attributes everything received up to a last counter
reading without waiting the settle delay, answers one final scrape with those numbers, and exits."""

from __future__ import annotations

import signal
import subprocess
import time

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from servers import ExporterProcess, http_get, sum_samples, wait_for


def send_spans(exporter: ExporterProcess, n: int) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "m"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{exporter.grpc_port}", insecure=True)))
    tracer = provider.get_tracer("test")
    for i in range(n):
        with tracer.start_as_current_span("llm_request", attributes={
                "gen_ai.request.id": f"r{i}", "gen_ai.usage.prompt_tokens": 10,
                "gen_ai.usage.completion_tokens": 20}):
            time.sleep(0.2)
    provider.shutdown()


def test_sigterm_attributes_what_was_received_and_answers_a_final_scrape():
    # a settle delay of 5 minutes: without the final attribution nothing would be attributed
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.5", "--settle-delay", "300",
                               "--counter-interval", "5", "--shutdown-scrape-wait", "30")
    send_spans(exporter, 5)
    wait_for(lambda: sum_samples(http_get(exporter.url("/metrics"))[1], "jouletrace_spans_received_total") == 5,
             10, "5 spans received")
    assert sum_samples(http_get(exporter.url("/metrics"))[1], "jouletrace_model_requests_total") == 0
    t0 = time.monotonic()
    exporter.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "final attribution done" in exporter.output(), 10, "the final attribution")
    status, text = http_get(exporter.url("/metrics"))
    assert status == 200
    assert sum_samples(text, "jouletrace_model_requests_total", model="m") == 5
    assert sum_samples(text, "jouletrace_model_energy_joules_total", model="m") > 0
    assert exporter.proc.wait(10) == 0  # exits right after the final scrape, not after 30 s
    assert time.monotonic() - t0 < 15


def test_sigterm_without_a_scrape_exits_after_the_wait():
    exporter = ExporterProcess("--gpu", "sim", "--shutdown-scrape-wait", "1")
    t0 = time.monotonic()
    exporter.proc.send_signal(signal.SIGTERM)
    try:
        assert exporter.proc.wait(15) == 0
    except subprocess.TimeoutExpired:
        exporter.proc.kill()
        raise
    assert time.monotonic() - t0 < 10
    assert "no final scrape within 1 s" in exporter.output()
