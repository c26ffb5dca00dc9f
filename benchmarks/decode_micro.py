"""OTLP/protobuf span decoding cost, in microseconds per span, on a vLLM-like export request.

The payload is one ExportTraceServiceRequest holding `--spans` copies of the real vLLM
``llm_request`` span of tests/fixtures (13 attributes, about 600 bytes each), each with fresh
trace, span and request ids, under the fixture's resource. Three ways through it:

    upb ParseFromString     the official message class, parsed and nothing else: the ceiling
    C decoder               jouletrace's exporter._otlpwire.decode (rows, models, request ids)
    C decoder + frombuffer  exporter.otlp.decode_protobuf: the above wrapped as a RequestBatch

Each figure is the median of `--repeats` timings of `--loops` back-to-back decodes.

    python benchmarks/decode_micro.py [--spans 512] [--repeats 15] [--loops 200]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from jouletrace.exporter.intake import _otlpwire
from jouletrace.exporter.intake.otlp import decode_protobuf

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vllm-0.32.0-cpu-llm_request.otlp.pb"


def payload(n: int) -> bytes:
    src = trace_service_pb2.ExportTraceServiceRequest()
    src.ParseFromString(FIXTURE.read_bytes())
    rs = src.resource_spans[0]
    template = next(s for ss in rs.scope_spans for s in ss.spans if s.name == "llm_request")

    msg = trace_service_pb2.ExportTraceServiceRequest()
    out = msg.resource_spans.add()
    out.resource.CopyFrom(rs.resource)
    ss = out.scope_spans.add()
    ss.scope.name = "vllm.tracing.otel"
    for i in range(n):
        span = ss.spans.add()
        span.CopyFrom(template)
        span.trace_id = os.urandom(16)
        span.span_id = os.urandom(8)
        span.start_time_unix_nano = template.start_time_unix_nano + i * 1_000_000
        span.end_time_unix_nano = template.end_time_unix_nano + i * 1_000_000
        for kv in span.attributes:
            if kv.key == "gen_ai.request.id":
                kv.value.string_value = f"chatcmpl-{os.urandom(16).hex()}"
    return msg.SerializeToString()


def us_per_span(fn, body: bytes, spans: int, loops: int, repeats: int) -> float:
    fn(body)  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            fn(body)
        times.append((time.perf_counter_ns() - t0) / loops / spans / 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--loops", type=int, default=200)
    args = ap.parse_args()

    body = payload(args.spans)
    res = decode_protobuf(body, "model")
    assert len(res.batch) == args.spans and res.rejected == 0 and res.ignored == 0

    def upb(b: bytes) -> None:
        trace_service_pb2.ExportTraceServiceRequest().ParseFromString(b)

    def c_decoder(b: bytes) -> None:
        _otlpwire.decode(b, "model")

    def c_and_frombuffer(b: bytes) -> None:
        decode_protobuf(b, "model")

    print(f"{args.spans} spans, {len(body)} bytes ({len(body) / args.spans:.0f} per span); "
          f"median of {args.repeats} x {args.loops} decodes")
    ceiling = None
    for name, fn in (("upb ParseFromString", upb), ("C decoder", c_decoder),
                     ("C decoder + frombuffer", c_and_frombuffer)):
        us = us_per_span(fn, body, args.spans, args.loops, args.repeats)
        ceiling = ceiling or us
        print(f"  {name:<24} {us:7.3f} us/span  {1e6 / us / 1e6:6.2f} M spans/s  "
              f"{ceiling / us:5.2f}x upb")


if __name__ == "__main__":
    main()
