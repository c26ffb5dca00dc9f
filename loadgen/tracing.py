"""The loadgen's own client span per request (OpenTelemetry SDK), whose context goes to the server
as a W3C `traceparent`, so the server's span is its child in the same trace.

Spans go to an OTLP endpoint when one is given: `grpc://host:port` or `http://host:port` (OTLP/gRPC)
or `http(s)://host:port/v1/traces` (OTLP/HTTP protobuf). Without the SDK installed, ids are random
and no span is recorded."""

from __future__ import annotations

import random

try:
    from opentelemetry import trace as _trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
except ImportError:  # pragma: no cover - the loadgen extra installs it
    _trace = None


class ClientTracer:
    def __init__(self, otlp_endpoint: str | None = None, service_name: str = "jouletrace-loadgen"):
        self.provider = None
        self.tracer = None
        if _trace is None:
            if otlp_endpoint:
                raise RuntimeError("--otlp-endpoint needs opentelemetry-sdk: pip install 'jouletrace[loadgen]'")
            return
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        if otlp_endpoint:
            self.provider.add_span_processor(BatchSpanProcessor(_exporter(otlp_endpoint), schedule_delay_millis=500))
        self.tracer = self.provider.get_tracer("jouletrace.loadgen")

    def start(self, name: str, attributes: dict):
        """(span or None, trace id hex, span id hex) of a new client span, started now."""
        if self.tracer is None:
            return None, f"{random.getrandbits(128) | 1:032x}", f"{random.getrandbits(64) | 1:016x}"
        span = self.tracer.start_span(name, kind=_trace.SpanKind.CLIENT, attributes=attributes)
        ctx = span.get_span_context()
        return span, f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"

    def shutdown(self) -> None:
        """Sends the spans still buffered (up to 5 s)."""
        if self.provider is not None:
            self.provider.force_flush(5000)
            self.provider.shutdown()


def traceparent(trace_id: str, span_id: str) -> str:
    """W3C trace context header value, sampled."""
    return f"00-{trace_id}-{span_id}-01"


def _exporter(endpoint: str):
    if endpoint.startswith("grpc://") or not endpoint.rstrip("/").endswith("/v1/traces"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint.replace("grpc://", "http://", 1), insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=endpoint)
