"""Cost and emissions end to end: real OpenTelemetry SDK spans reach `jouletrace exporter --gpu sim`
run with a price, a carbon intensity and a grid file; /metrics prices the attributed energy at the
file's values, follows the file when it is rewritten, and counts a broken or removed file while the
last good values stay. An exporter given none of them exports no cost or emissions series."""

import json
import time

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from servers import ExporterProcess, http_get, samples, wait_for

MODEL = "llama-e2e"


def send(exporter: ExporterProcess, n: int, first: int) -> None:
    """n sequential llm_request spans of 0.3 s, 50 input and 20 output tokens each."""
    provider = TracerProvider(resource=Resource.create({"service.name": MODEL}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"http://127.0.0.1:{exporter.http_port}/v1/traces"), schedule_delay_millis=200))
    tracer = provider.get_tracer("test")
    for i in range(first, first + n):
        with tracer.start_as_current_span("llm_request", attributes={
                "gen_ai.request.id": f"r{i}", "gen_ai.usage.input_tokens": 50, "gen_ai.usage.output_tokens": 20}):
            time.sleep(0.3)
    provider.shutdown()


def scrape(exporter: ExporterProcess) -> dict:
    """{(name, currency or reason or None): value} of the model's series and the exporter's own."""
    status, text = http_get(exporter.url("/metrics"))
    assert status == 200
    return {(s.name, s.labels.get("currency") or s.labels.get("reason")): s.value for s in samples(text)
            if s.labels.get("model") in (MODEL, None)}


def settled(exporter: ExporterProcess) -> dict:
    """A scrape once the model's attributed energy stopped growing (every request attributed)."""
    seen = []

    def still() -> dict | None:
        seen.append(scrape(exporter))
        energy = [m.get(("jouletrace_model_energy_joules_total", None)) for m in seen[-2:]]
        return seen[-1] if len(energy) == 2 and energy[0] and energy[0] == energy[1] else None
    return wait_for(still, 60, "the attributed energy to settle", period_s=1.5)


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"electricity_price": 0.12, "currency": "USD"}))
    return path


def test_cost_and_emissions_follow_the_grid_file(grid_file):
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.6", "--settle-delay", "1", "--counter-interval", "1",
                               "--window", "600", "--electricity-price", "0.10", "--currency", "USD",
                               "--grid-carbon-intensity", "300", "--grid-file", str(grid_file))
    try:
        send(exporter, 4, 0)
        m = settled(exporter)
        kwh = m[("jouletrace_model_energy_joules_total", None)] / 3.6e6
        # the file's price from the start (no energy before it was read), the flags' intensity
        assert m[("jouletrace_model_cost_total", "USD")] == pytest.approx(kwh * 0.12, rel=1e-9)
        assert m[("jouletrace_model_co2e_grams_total", None)] == pytest.approx(kwh * 300, rel=1e-9)
        per_million_kwh = m[("jouletrace_model_energy_per_output_token_joules", None)] * 1e6 / 3.6e6
        assert m[("jouletrace_model_cost_per_million_output_tokens", "USD")] == pytest.approx(per_million_kwh * 0.12)
        assert m[("jouletrace_model_co2e_per_million_output_tokens_grams", None)] == pytest.approx(
            per_million_kwh * 300)
        read_at = m[("jouletrace_grid_file_read_timestamp_seconds", None)]
        usd = m[("jouletrace_model_cost_total", "USD")]

        grid_file.write_text(json.dumps({"electricity_price": 0.3, "currency": "EUR", "grid_carbon_intensity": 50}))
        wait_for(lambda: scrape(exporter).get(("jouletrace_grid_file_read_timestamp_seconds", None), 0) > read_at,
                 30, "the rewritten grid file to be read")
        send(exporter, 3, 100)
        before = m
        m = wait_for(lambda: (lambda s: s if s[("jouletrace_model_energy_joules_total", None)] > kwh * 3.6e6 else None)(
            settled(exporter)), 60, "the new requests' energy")
        added_kwh = m[("jouletrace_model_energy_joules_total", None)] / 3.6e6 - kwh
        assert m[("jouletrace_model_cost_total", "USD")] == usd  # energy before the change kept its price
        assert m[("jouletrace_model_cost_total", "EUR")] == pytest.approx(added_kwh * 0.3, rel=1e-6)
        assert m[("jouletrace_model_co2e_grams_total", None)] == pytest.approx(
            before[("jouletrace_model_co2e_grams_total", None)] + added_kwh * 50, rel=1e-6)
        assert ("jouletrace_model_cost_per_million_output_tokens", "EUR") in m

        grid_file.write_text("{broken")
        m = wait_for(lambda: (lambda s: s if s[("jouletrace_grid_file_errors_total", "invalid")] == 1 else None)(
            scrape(exporter)), 30, "the broken grid file to be counted")
        assert ("jouletrace_model_cost_per_million_output_tokens", "EUR") in m  # the last good values stay
        grid_file.unlink()
        m = wait_for(lambda: (lambda s: s if s[("jouletrace_grid_file_errors_total", "missing")] == 1 else None)(
            scrape(exporter)), 30, "the removed grid file to be counted")
        assert m[("jouletrace_grid_file_errors_total", "invalid")] == 1
        assert ("jouletrace_model_cost_per_million_output_tokens", "EUR") in m
        assert exporter.proc.poll() is None
        log = exporter.output()
        assert f"grid file {grid_file}: not JSON" in log and f"grid file {grid_file}: no such file" in log
    finally:
        assert exporter.stop() == 0, exporter.output()


def test_no_cost_or_emissions_series_without_a_price_an_intensity_or_a_file():
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.6", "--settle-delay", "1", "--counter-interval", "1")
    try:
        send(exporter, 2, 0)
        wait_for(lambda: ("jouletrace_model_energy_per_output_token_joules", None) in scrape(exporter), 60,
                 "energy per token")
        status, text = http_get(exporter.url("/metrics"))
        assert not [name for name in ("_cost", "_co2e", "jouletrace_grid") if name in text]
    finally:
        assert exporter.stop() == 0, exporter.output()
