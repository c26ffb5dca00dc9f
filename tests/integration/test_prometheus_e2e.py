"""End to end: real OpenTelemetry SDK exporters (gRPC and HTTP) send spans to a running
`jouletrace exporter --gpu sim`; a real Prometheus server scrapes it; PromQL returns the values."""

import time

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from servers import ExporterProcess, PrometheusProcess, wait_for

LOAD = 0.6  # simulated GPU load: 75 W idle + 0.6 * 625 W = 450 W, +-2 % noise
POWER_W = 75 + LOAD * 625


def send(exporter, service: str, n: int, prompt: int, completion: int, seconds: float) -> list[tuple[int, int]]:
    """n sequential llm_request spans of `seconds` each; returns their (start, end) in ns."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    tracer = provider.get_tracer("test")
    times = []
    for i in range(n):
        with tracer.start_as_current_span("llm_request", attributes={
            "gen_ai.request.id": f"{service}-{i}",
            "gen_ai.usage.prompt_tokens": prompt,
            "gen_ai.usage.completion_tokens": completion,
        }) as span:
            time.sleep(seconds)
        times.append((span.start_time, span.end_time))
    provider.shutdown()
    return times


@pytest.fixture(scope="module")
def stack():
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", str(LOAD), "--settle-delay", "2",
                               "--counter-interval", "1", "--window", "30")
    prom = PrometheusProcess([f"127.0.0.1:{exporter.metrics_port}"])
    yield exporter, prom
    prom.stop()
    assert exporter.stop() == 0, exporter.output()


def test_spans_from_both_protocols_reach_prometheus(stack):
    exporter, prom = stack
    grpc_times = send(GrpcExporter(endpoint=f"127.0.0.1:{exporter.grpc_port}", insecure=True),
                      "llama-grpc", n=6, prompt=120, completion=40, seconds=0.4)
    http_times = send(HttpExporter(endpoint=f"http://127.0.0.1:{exporter.http_port}/v1/traces"),
                      "llama-http", n=4, prompt=300, completion=90, seconds=0.5)

    def tokens():
        return prom.scalar('sum(jouletrace_model_output_tokens_total{model=~"llama-.*"})') == 6 * 40 + 4 * 90
    wait_for(tokens, 60, "token counters in Prometheus")

    q = prom.scalar
    assert q('jouletrace_model_requests_total{model="llama-grpc",backend="sim"}') == 6
    assert q('jouletrace_model_requests_total{model="llama-http",backend="sim"}') == 4
    assert q('jouletrace_model_input_tokens_total{model="llama-grpc"}') == 6 * 120
    assert q('jouletrace_model_input_tokens_total{model="llama-http"}') == 4 * 300
    assert q('sum(jouletrace_spans_received_total{protocol="grpc"})') == 6
    assert q('sum(jouletrace_spans_received_total{protocol="http"})') == 4
    assert q("sum(jouletrace_spans_rejected_total)") == 0

    # Each request ran alone on a GPU drawing ~450 W: its energy is ~450 W x its duration.
    for model, times in (("llama-grpc", grpc_times), ("llama-http", http_times)):
        seconds = sum(end - start for start, end in times) / 1e9
        energy = q(f'jouletrace_model_energy_joules_total{{model="{model}"}}')
        assert energy == pytest.approx(POWER_W * seconds, rel=0.05)
        assert q(f'jouletrace_request_energy_joules_count{{model="{model}"}}') == len(times)
        assert q(f'jouletrace_request_energy_joules_sum{{model="{model}"}}') == pytest.approx(energy, rel=1e-9)
        per_token = q(f'jouletrace_model_energy_per_output_token_joules{{model="{model}"}}')
        completion = 40 if model == "llama-grpc" else 90
        assert per_token == pytest.approx(energy / (len(times) * completion), rel=0.05)


def test_measured_energy_and_conservation_in_promql(stack):
    exporter, prom = stack
    # rate() needs its whole range covered by scrapes
    wait_for(lambda: (prom.scalar("count_over_time(jouletrace_gpu_energy_joules_total[25s])") or 0) >= 24, 60,
             "25 s of scrapes")
    power = prom.scalar("rate(jouletrace_gpu_energy_joules_total[20s])")
    assert power == pytest.approx(POWER_W, rel=0.08)  # settlements every 1 s alias with 1 s scrapes
    assert prom.scalar('jouletrace_gpu_power_watts{backend="sim"}') == pytest.approx(POWER_W, rel=0.06)
    # attributed energy per GPU equals the sum over models; attributed + idle grows like measured energy
    attributed = prom.scalar("sum(jouletrace_gpu_attributed_energy_joules_total)")
    models = prom.scalar("sum(jouletrace_model_energy_joules_total)")
    assert attributed == pytest.approx(models, rel=1e-6)
    finalized = prom.scalar("sum(jouletrace_gpu_attributed_energy_joules_total + jouletrace_gpu_idle_energy_joules_total)")
    measured = prom.scalar("sum(jouletrace_gpu_energy_joules_total)")
    assert 0 < finalized <= measured
    assert prom.scalar("jouletrace_gpu_up") == 1
    assert prom.scalar('jouletrace_build_info{backend="sim"}') == 1
