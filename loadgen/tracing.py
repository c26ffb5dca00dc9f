"""The loadgen's own client span per request (OpenTelemetry SDK), whose context goes to the server
as a W3C `traceparent`, so the server's span is its child in the same trace.

Spans go to an OTLP endpoint when one is given: `grpc://host:port` or `http://host:port` (OTLP/gRPC)
or `http(s)://host:port/v1/traces` (OTLP/HTTP protobuf)."""

from __future__ import annotations

from opentelemetry import trace as _trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


class ClientTracer:
    def __init__(self, otlp_endpoint: str | None = None, service_name: str = "jouletrace-loadgen"):
        self.provider = tracer_provider(service_name, otlp_endpoint)
        self.tracer = self.provider.get_tracer("jouletrace.loadgen")

    def start(self, name: str, attributes: dict):
        """(span, trace id hex, span id hex) of a new client span, started now."""
        span = self.tracer.start_span(name, kind=_trace.SpanKind.CLIENT, attributes=attributes)
        ctx = span.get_span_context()
        return span, f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"

    def shutdown(self) -> None:
        """Sends the spans still buffered (up to 5 s)."""
        self.provider.force_flush(5000)
        self.provider.shutdown()


def traceparent(trace_id: str, span_id: str) -> str:
    """W3C trace context header value, sampled."""
    return f"00-{trace_id}-{span_id}-01"


def tracer_provider(service_name: str, otlp_endpoint: str | None) -> "TracerProvider":
    """An SDK tracer provider for `service_name` whose spans leave every 0.5 s for `otlp_endpoint`
    (none: kept local)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        provider.add_span_processor(BatchSpanProcessor(span_exporter(otlp_endpoint), schedule_delay_millis=500))
    return provider


def span_exporter(endpoint: str):
    """The OTLP span exporter for `endpoint` (see the module docstring for the protocol rule)."""
    if endpoint.startswith("grpc://") or not endpoint.rstrip("/").endswith("/v1/traces"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint.replace("grpc://", "http://", 1), insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=endpoint)
