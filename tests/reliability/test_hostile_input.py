"""Hostile input against a live exporter's OTLP/HTTP and OTLP/gRPC endpoints: fuzzed bodies, the
hand-written cases (truncated protobuf, deep nesting, huge strings, invalid UTF-8, wrong types,
bad times and ids, spans from the far future, duplicates, gzip bombs), and slow or idle clients
holding connections. The exporter answers each per the OTLP specification, never 500 or INTERNAL,
stays up and keeps rendering /metrics. The decoders' own hostile-input tests are in
tests/test_otlp_decode.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import struct
import time

import aiohttp
import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace.export import SpanExportResult
from servers import ExporterProcess, http_get, sum_samples
from span_load import Stamper, sdk_span
from test_otlp_decode import ival, kv, nested_kvlist, raw_span, request_of_spans, sval

from jouletrace.exporter.intake.otlp_grpc import GRPC_METHOD

MAX_BYTES = 256 << 10
PB, JS = "application/x-protobuf", "application/json"
HTTP_OK = {200, 400, 413, 415}
GRPC_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
VALID = Stamper(4).stamp()


@pytest.fixture(scope="module")
def exporter():
    proc = ExporterProcess("--gpu", "sim", "--settle-delay", "1", "--counter-interval", "0.5",
                           "--max-message-bytes", str(MAX_BYTES), "--log-level", "warning")
    yield proc
    proc.stop()


def post(exporter: ExporterProcess, body: bytes, content_type: str = PB, encoding: str = "") -> tuple[int, bytes]:
    async def go():
        headers = {"Content-Type": content_type, **({"Content-Encoding": encoding} if encoding else {})}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{exporter.http_port}/v1/traces", data=body,
                                    headers=headers) as r:
                return r.status, await r.read()
    return asyncio.run(go())


def export_grpc(exporter: ExporterProcess, body: bytes) -> tuple[grpc.StatusCode, bytes]:
    with grpc.insecure_channel(f"127.0.0.1:{exporter.grpc_port}") as channel:
        try:
            return grpc.StatusCode.OK, channel.unary_unary(GRPC_METHOD)(body, timeout=30)
        except grpc.RpcError as err:
            return err.code(), b""


def rejected_spans(answer: bytes) -> int:
    return trace_service_pb2.ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans


def assert_healthy(exporter: ExporterProcess) -> None:
    """Up, /metrics renders, and no answer was a 500 or INTERNAL."""
    assert exporter.proc.poll() is None, exporter.output()
    status, text = http_get(exporter.url("/metrics"))
    assert status == 200
    assert sum_samples(text, "jouletrace_otlp_requests_total", code="500") == 0
    assert sum_samples(text, "jouletrace_otlp_requests_total", code="INTERNAL") == 0
    assert sum_samples(text, "jouletrace_spans_rejected_total", reason="internal") == 0


# ------------------------------------------------------------------------------------------
# Fuzzing

_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
_JSON = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=20)
_SPAN_KEYS = st.sampled_from(["traceId", "spanId", "name", "startTimeUnixNano", "endTimeUnixNano", "attributes",
                              "key", "value", "intValue", "stringValue", "gen_ai.usage.input_tokens"])
_OTLP_JSON = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_SPAN_KEYS, inner,
                                                                                            max_size=5), max_leaves=30)
_MUTATED = st.tuples(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
                     st.integers(0, len(VALID))).map(lambda t: _mutate(*t))
BODIES = st.one_of(
    st.binary(max_size=2000),
    _MUTATED,
    _JSON.map(lambda v: json.dumps(v).encode()),
    _OTLP_JSON.map(lambda spans: json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [spans]}]}]}).encode()),
)


def _mutate(changes: list[tuple[int, int]], cut: int) -> bytes:
    body = bytearray(VALID)
    for at, byte in changes:
        body[at] = byte
    return bytes(body[:cut])


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@FUZZ
@given(BODIES, st.sampled_from([PB, JS, "text/plain"]), st.sampled_from(["", "gzip", "gzip-declared", "br"]))
def test_fuzzed_http_bodies_are_answered_without_500(exporter, body, content_type, encoding):
    if encoding == "gzip":
        body = gzip.compress(body)
    status, _ = post(exporter, body, content_type, "gzip" if encoding == "gzip-declared" else encoding)
    assert status in HTTP_OK


@FUZZ
@given(BODIES)
def test_fuzzed_grpc_messages_are_answered_without_internal(exporter, body):
    code, _ = export_grpc(exporter, body)
    assert code in GRPC_OK


def test_after_fuzzing_the_exporter_is_healthy(exporter):
    assert_healthy(exporter)


# ------------------------------------------------------------------------------------------
# Hand-written cases: (body, HTTP status, spans rejected in a partial success, Content-Type, encoding)

def _span(*attrs: bytes, **kw) -> bytes:
    return request_of_spans(raw_span(*attrs, kv("gen_ai.usage.input_tokens", ival(10)), **kw))


def _json_span(**edit) -> bytes:
    now = time.time_ns()
    span = {"traceId": "01" * 16, "spanId": "02" * 8, "name": "chat", "startTimeUnixNano": str(now - 10**9),
            "endTimeUnixNano": str(now), "attributes": [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": 5}}]}
    span.update(edit)
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


NOW_NS = time.time_ns()
CASES = {
    "truncated protobuf": (VALID[:-7], 400, 0, PB, ""),
    "deeply nested attribute value (protobuf)": (_span(kv("deep", nested_kvlist(3000, ival(1)))), 200, 0, PB, ""),
    "deeply nested attribute value (JSON)": (
        _json_span(attributes=[{"key": "deep", "value": json.loads("[" * 500 + "]" * 500)}]), 200, 0, JS, ""),
    "JSON nested past the parser's recursion limit": (b'{"resourceSpans": ' + b"[" * 100_000, 400, 0, JS, ""),
    "huge request id, cut": (_span(kv("gen_ai.request.id", sval("r" * (200 << 10)))), 200, 0, PB, ""),
    "huge string over the size limit": (_span(kv("note", sval("x" * MAX_BYTES))), 413, 0, PB, ""),
    "invalid UTF-8 in a request id (protobuf)": (_span(kv("gen_ai.request.id", sval(b"\xff\xfe"))), 400, 0, PB, ""),
    "invalid UTF-8 (JSON)": (_json_span(name="x").replace(b'"x"', b'"\xff"'), 400, 0, JS, ""),
    "token count of the wrong type": (_json_span(attributes=[
        {"key": "gen_ai.usage.input_tokens", "value": {"boolValue": True}}]), 200, 1, JS, ""),
    "negative duration": (_span(kv("gen_ai.latency.time_in_model_decode", b"\x21" + struct.pack("<d", -1.0))),
                          200, 1, PB, ""),
    "end before start": (_json_span(startTimeUnixNano=str(NOW_NS), endTimeUnixNano=str(NOW_NS - 1)), 200, 1, JS, ""),
    "trace id of the wrong length": (_span(tid=b"\x01" * 15), 200, 1, PB, ""),
    "span id of the wrong length": (_json_span(spanId="02" * 9), 200, 1, JS, ""),
    "end an hour in the future": (_span(start=NOW_NS, end=NOW_NS + 3600 * 10**9), 200, 1, PB, ""),
    "gzip bomb": (gzip.compress(b"\0" * (64 << 20)), 413, 0, PB, "gzip"),
}


@pytest.mark.parametrize("case", CASES)
def test_hand_written_hostile_input(exporter, case):
    body, expected, rejected, content_type, encoding = CASES[case]
    status, answer = post(exporter, body, content_type, encoding)
    assert status == expected
    if status == 200 and content_type == PB:
        assert rejected_spans(answer) == rejected
    elif status == 200:
        assert int(json.loads(answer).get("partialSuccess", {}).get("rejectedSpans", 0)) == rejected
    if content_type == PB and not encoding:
        code, answer = export_grpc(exporter, body)
        assert code == {200: grpc.StatusCode.OK, 400: grpc.StatusCode.INVALID_ARGUMENT,
                        413: grpc.StatusCode.RESOURCE_EXHAUSTED}[expected]
        if code == grpc.StatusCode.OK:
            assert rejected_spans(answer) == rejected
    assert_healthy(exporter)


def test_duplicate_spans_are_counted_once(exporter):
    def counts():
        text = http_get(exporter.url("/metrics"))[1]
        return (sum_samples(text, "jouletrace_spans_duplicate_total"),
                sum_samples(text, "jouletrace_model_requests_total") + sum_samples(text, "jouletrace_requests_pending"))

    body = Stamper(8).stamp()
    duplicates, requests = counts()
    assert post(exporter, body)[0] == 200
    assert export_grpc(exporter, body)[0] == grpc.StatusCode.OK
    assert post(exporter, body)[0] == 200
    assert counts() == (duplicates + 16, requests + 8)


# ------------------------------------------------------------------------------------------
# Slow and idle clients

def test_slow_and_idle_clients_do_not_block_the_others(exporter):
    """Hundreds of connections held open mid-request (slowloris) on the HTTP port and idle on the
    gRPC port: an OpenTelemetry SDK exporter still delivers over both protocols."""
    held = []
    partial = [b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n",
               b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
               b"Content-Length: 100000\r\n\r\n" + VALID[:100],
               b""]
    channels = [grpc.insecure_channel(f"127.0.0.1:{exporter.grpc_port}") for _ in range(50)]
    try:
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", exporter.http_port))
            s.sendall(partial[i % 3])
            held.append(s)
        for i in range(100):
            s = socket.create_connection(("127.0.0.1", exporter.grpc_port))
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[: i % 24])
            held.append(s)
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
        now = time.time_ns()
        http = HttpExporter(endpoint=f"http://127.0.0.1:{exporter.http_port}/v1/traces", timeout=30)
        sdk_grpc = GrpcExporter(endpoint=f"127.0.0.1:{exporter.grpc_port}", insecure=True, timeout=30)
        assert http.export([sdk_span(9_000_001, now)]) == SpanExportResult.SUCCESS
        assert sdk_grpc.export([sdk_span(9_000_002, now)]) == SpanExportResult.SUCCESS
        http.shutdown()
        sdk_grpc.shutdown()
        assert_healthy(exporter)
    finally:
        for s in held:
            s.close()
        for channel in channels:
            channel.close()
    assert post(exporter, VALID)[0] == 200
