"""vLLM-like OTLP payloads for the intake benchmarks: the captured vLLM span, copied with fresh ids."""

from __future__ import annotations

import os
import pathlib

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vllm-0.32.0-cpu-llm_request.otlp.pb"


def template() -> trace_service_pb2.ExportTraceServiceRequest:
    msg = trace_service_pb2.ExportTraceServiceRequest()
    msg.ParseFromString(FIXTURE.read_bytes())
    return msg


def build(spans: int, end_s: float, spacing_s: float = 0.001, service: str = "bench-model") -> bytes:
    """One ExportTraceServiceRequest of `spans` llm_request spans ending up to `end_s`, unique ids."""
    src = template()
    span = next(s for rs in src.resource_spans for ss in rs.scope_spans for s in ss.spans if s.name == "llm_request")
    msg = trace_service_pb2.ExportTraceServiceRequest()
    rs = msg.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    ss = rs.scope_spans.add()
    ss.scope.name = "vllm.tracing.otel"
    duration = span.end_time_unix_nano - span.start_time_unix_nano
    for i in range(spans):
        s = ss.spans.add()
        s.CopyFrom(span)
        s.trace_id = os.urandom(16)
        s.span_id = os.urandom(8)
        end = int((end_s - (spans - i) * spacing_s) * 1e9)
        s.end_time_unix_nano = end
        s.start_time_unix_nano = end - duration
    return msg.SerializeToString()
