"""The OTLP/HTTP and OTLP/gRPC intake servers, driven by the OpenTelemetry SDK and raw clients."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import re
import time
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from jouletrace.exporter.intake import core as intake
from jouletrace.exporter.intake.core import PROTOCOLS, REASONS, IntakeStats, Receiver
from jouletrace.exporter.intake.otlp_grpc import GRPC_METHOD, GrpcIntake
from jouletrace.exporter.intake.otlp_http import HttpIntake
from jouletrace.exporter.ledger.records import IntakeFull, RequestBatch, RequestRecord
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from otlp_json import to_otlp_json

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32.0-cpu-llm_request.otlp.pb"
FIXTURE_BYTES = FIXTURE.read_bytes()
FIXTURE_IDS = ["chatcmpl-req1", "chatcmpl-req2", "chatcmpl-req3"]

MAX_BYTES = 64 * 1024
DEFAULT_MODEL = "test-model"
PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}


class ListSink:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self.full = False  # shed messages before decoding
        self.refusing = False  # refuse batches when submitted
        self.broken = False

    def submit(self, batch: RequestBatch) -> None:
        assert isinstance(batch, RequestBatch) and len(batch) > 0
        if self.broken:
            raise RuntimeError("sink bug")
        if self.refusing:
            raise IntakeFull()
        self.records.extend(batch.records())


class Servers:
    def __init__(self, sink: ListSink, stats: IntakeStats, http_port: int, grpc_port: int):
        self.sink, self.stats = sink, stats
        self.http_port, self.grpc_port = http_port, grpc_port
        self.url = f"http://127.0.0.1:{http_port}/v1/traces"
        self.target = f"127.0.0.1:{grpc_port}"

    def delta(self, before: dict) -> dict:
        """Counter changes since `before`, without the zero entries."""
        now = self.stats.snapshot()
        out = {}
        for section, values in now.items():
            d = {k: v - before[section].get(k, 0) for k, v in values.items()}
            d = {k: v for k, v in d.items() if v}
            if d:
                out[section] = d
        return out


def receiver(sink, stats: IntakeStats, max_bytes: int = MAX_BYTES) -> Receiver:
    return Receiver(sink, stats, max_bytes=max_bytes, default_model=DEFAULT_MODEL)


@contextlib.asynccontextmanager
async def running(max_bytes: int = MAX_BYTES):
    sink, stats = ListSink(), IntakeStats()
    both = receiver(sink, stats, max_bytes)
    http_intake, grpc_intake = HttpIntake("127.0.0.1", 0, both), GrpcIntake("127.0.0.1", 0, both)
    await http_intake.start()
    await grpc_intake.start()
    try:
        assert http_intake.port > 0 and grpc_intake.port > 0
        yield Servers(sink, stats, http_intake.port, grpc_intake.port)
    finally:
        await grpc_intake.stop()
        await http_intake.stop()


def run(coro_fn):
    """Run an async test body against fresh servers."""
    async def main():
        async with running() as s:
            await coro_fn(s)
    asyncio.run(main())


async def post(s: Servers, body, headers, **kw):
    async with aiohttp.ClientSession() as session:
        async with session.post(s.url, data=body, headers=headers, **kw) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def grpc_export(s: Servers, body: bytes, **kw) -> bytes:
    async with grpc.aio.insecure_channel(s.target) as channel:
        return await channel.unary_unary(GRPC_METHOD)(body, timeout=10, **kw)


def status_message(body: bytes) -> status_pb2.Status:
    st = status_pb2.Status()
    st.ParseFromString(body)
    return st


def bad_span_request() -> bytes:
    """The fixture plus one llm_request span with negative completion tokens."""
    msg = trace_service_pb2.ExportTraceServiceRequest()
    msg.ParseFromString(FIXTURE_BYTES)
    spans = msg.resource_spans[0].scope_spans[1].spans
    bad = spans.add()
    bad.CopyFrom(spans[0])
    bad.span_id = bytes.fromhex("00000000deadbeef")
    for kv in bad.attributes:
        if kv.key == "gen_ai.usage.completion_tokens":
            kv.value.int_value = -4
        if kv.key == "gen_ai.request.id":
            kv.value.string_value = "chatcmpl-bad"
    return msg.SerializeToString()


def test_stats_start_at_zero_for_every_protocol_and_reason():
    snap = IntakeStats().snapshot()
    assert snap["received"] == {"http": 0, "grpc": 0}
    assert snap["accepted"] == {"http": 0, "grpc": 0}
    assert snap["ignored"] == {"http": 0, "grpc": 0}
    assert snap["rejected"] == {(p, r): 0 for p in PROTOCOLS for r in REASONS}
    assert snap["requests"] == {}
    assert {"too_large", "malformed", "invalid_span", "queue_full", "unsupported_media_type"} <= set(REASONS)


# ------------------------------------------------------------------------------------------
# The real OpenTelemetry SDK exporters


def sdk_spans(n: int):
    """Finished SDK spans shaped like vLLM's llm_request spans."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )
    from opentelemetry.trace import SpanKind

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-served-model"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("vllm.tracing.otel")
    for i in range(n):
        with tracer.start_as_current_span("llm_request", kind=SpanKind.SERVER) as span:
            span.set_attribute("gen_ai.request.id", f"cmpl-sdk{i}")
            span.set_attribute("gen_ai.usage.prompt_tokens", 10 + i)
            span.set_attribute("gen_ai.usage.completion_tokens", 100 + i)
            span.set_attribute("gen_ai.latency.time_in_queue", 0.001 * i)
            span.set_attribute("gen_ai.latency.time_to_first_token", 0.02)
    with tracer.start_as_current_span("unrelated"):
        pass
    spans = memory.get_finished_spans()
    provider.shutdown()
    return spans


def check_sdk_records(s: Servers, spans, protocol: str) -> None:
    n = len(spans) - 1
    recs = s.sink.records
    assert [r.request_id for r in recs] == [f"cmpl-sdk{i}" for i in range(n)]
    assert [(r.prompt_tokens, r.completion_tokens) for r in recs] == [(10 + i, 100 + i) for i in range(n)]
    assert all(r.model == "sdk-served-model" for r in recs)
    for rec, span in zip(recs, spans):
        assert rec.trace_id == span.context.trace_id.to_bytes(16, "big")
        assert rec.span_id == span.context.span_id.to_bytes(8, "big")
        assert rec.start == span.start_time / 1e9 and rec.end == span.end_time / 1e9
        assert rec.ttft_s == 0.02
    assert recs[3].queue_s == pytest.approx(0.003)
    snap = s.stats.snapshot()
    assert snap["accepted"][protocol] == n
    assert snap["ignored"][protocol] == 1
    assert snap["received"][protocol] == n + 1


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_sdk_http_exporter(compression):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    spans = sdk_spans(5)

    async def body(s: Servers):
        exporter = OTLPSpanExporter(
            endpoint=s.url, timeout=10,
            compression=Compression.Gzip if compression == "gzip" else Compression.NoCompression,
        )
        result = await asyncio.to_thread(exporter.export, spans)
        exporter.shutdown()
        assert result == SpanExportResult.SUCCESS
        check_sdk_records(s, spans, "http")
        assert s.stats.snapshot()["requests"] == {("http", "200"): 1}

    run(body)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_sdk_grpc_exporter(compression):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    spans = sdk_spans(5)

    async def body(s: Servers):
        exporter = OTLPSpanExporter(
            endpoint=s.target, insecure=True, timeout=10,
            compression=grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression,
        )
        result = await asyncio.to_thread(exporter.export, spans)
        exporter.shutdown()
        assert result == SpanExportResult.SUCCESS
        check_sdk_records(s, spans, "grpc")
        assert s.stats.snapshot()["requests"] == {("grpc", "OK"): 1}

    run(body)


# ------------------------------------------------------------------------------------------
# OTLP/HTTP with a raw client


def test_http_fixture_protobuf_and_json():
    async def body(s: Servers):
        status, headers, out = await post(s, FIXTURE_BYTES, PB)
        assert status == 200
        assert headers["Content-Type"].startswith("application/x-protobuf")
        resp = trace_service_pb2.ExportTraceServiceResponse()
        resp.ParseFromString(out)
        assert not resp.HasField("partial_success")
        assert [r.request_id for r in s.sink.records] == FIXTURE_IDS

        msg = trace_service_pb2.ExportTraceServiceRequest()
        msg.ParseFromString(FIXTURE_BYTES)
        js = json.dumps(to_otlp_json(msg)).encode()
        status, headers, out = await post(s, js, JS)
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(out) == {}
        assert [r.request_id for r in s.sink.records] == FIXTURE_IDS * 2
        assert s.sink.records[:3] == s.sink.records[3:]
        json_format.Parse(out, trace_service_pb2.ExportTraceServiceResponse())

        snap = s.stats.snapshot()
        assert snap["received"]["http"] == 10
        assert snap["accepted"]["http"] == 6
        assert snap["ignored"]["http"] == 4
        assert snap["requests"] == {("http", "200"): 2}
        assert sum(snap["rejected"].values()) == 0

    run(body)


def test_message_without_request_spans_is_not_submitted():
    """ListSink refuses empty batches (as an internal error): the intake must not hand it one."""
    msg = trace_service_pb2.ExportTraceServiceRequest()
    msg.ParseFromString(FIXTURE_BYTES)
    del msg.resource_spans[0].scope_spans[1:]  # the two start-up spans only

    async def body(s: Servers):
        before = s.stats.snapshot()
        for payload in (msg.SerializeToString(), b""):
            status, _, _ = await post(s, payload, PB)
            assert status == 200
        await grpc_export(s, msg.SerializeToString())
        assert s.sink.records == []
        assert s.delta(before) == {
            "received": {"http": 2, "grpc": 2}, "ignored": {"http": 2, "grpc": 2},
            "requests": {("http", "200"): 2, ("grpc", "OK"): 1},
        }

    run(body)


def test_http_gzip_body():
    async def body(s: Servers):
        before = s.stats.snapshot()
        status, _, _ = await post(s, gzip.compress(FIXTURE_BYTES), {**PB, "Content-Encoding": "gzip"})
        assert status == 200
        assert [r.request_id for r in s.sink.records] == FIXTURE_IDS
        # two gzip members concatenated are one valid gzip body
        two = gzip.compress(FIXTURE_BYTES[:1000]) + gzip.compress(FIXTURE_BYTES[1000:])
        status, _, _ = await post(s, two, {**PB, "Content-Encoding": "gzip"})
        assert status == 200
        assert len(s.sink.records) == 6
        assert s.delta(before) == {
            "received": {"http": 10}, "accepted": {"http": 6}, "ignored": {"http": 4},
            "requests": {("http", "200"): 2},
        }

    run(body)


def test_http_oversize_is_413_and_counted():
    big = FIXTURE_BYTES * (MAX_BYTES // len(FIXTURE_BYTES) + 1)  # valid protobuf, just too big
    assert len(big) > MAX_BYTES

    async def chunks():
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    async def body(s: Servers):
        before = s.stats.snapshot()
        status, headers, out = await post(s, big, PB)  # Content-Length announces it
        assert status == 413
        assert status_message(out).code == code_pb2.RESOURCE_EXHAUSTED
        assert str(MAX_BYTES) in status_message(out).message
        status, _, out = await post(s, chunks(), PB)  # chunked: found while reading
        assert status == 413
        assert status_message(out).message.startswith("body exceeds")
        status, headers, out = await post(s, big, JS)
        assert status == 413 and headers["Content-Type"].startswith("application/json")
        assert json.loads(out)["code"] == code_pb2.RESOURCE_EXHAUSTED
        assert s.sink.records == []
        assert s.delta(before) == {
            "rejected": {("http", "too_large"): 3}, "requests": {("http", "413"): 3},
        }
        # the server still answers after refusing mid-body
        status, _, _ = await post(s, FIXTURE_BYTES, PB)
        assert status == 200

    run(body)


def test_http_gzip_bomb_is_413_without_inflating():
    bomb = gzip.compress(b"\0" * (60 * 1024 * 1024), compresslevel=9)  # 60 MiB of zeros
    assert len(bomb) < MAX_BYTES

    async def body(s: Servers):
        before = s.stats.snapshot()
        status, _, out = await post(s, bomb, {**PB, "Content-Encoding": "gzip"})
        assert status == 413
        assert "decompressed" in status_message(out).message
        assert s.delta(before) == {
            "rejected": {("http", "too_large"): 1}, "requests": {("http", "413"): 1},
        }

    run(body)


def test_bounded_gunzip_never_holds_more_than_the_limit():
    import tracemalloc

    from jouletrace.exporter.intake.core import TooLarge, gunzip_bounded

    limit = 1024 * 1024
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            gunzip_bounded(bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * limit  # 64 MiB were never materialised
    assert gunzip_bounded(gzip.compress(b"x" * limit), limit) == b"x" * limit
    with pytest.raises(TooLarge):
        gunzip_bounded(gzip.compress(b"x" * (limit + 1)), limit)


def test_http_garbage_is_400_with_status():
    async def body(s: Servers):
        before = s.stats.snapshot()
        status, headers, out = await post(s, b"\xff\xff\xff\xff garbage", PB)
        assert status == 400
        assert headers["Content-Type"].startswith("application/x-protobuf")
        st = status_message(out)
        assert st.code == code_pb2.INVALID_ARGUMENT
        assert "ExportTraceServiceRequest" in st.message
        status, headers, out = await post(s, b"{oops", JS)
        assert status == 400
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(out)["code"] == code_pb2.INVALID_ARGUMENT
        assert "JSON" in json.loads(out)["message"]
        status, _, out = await post(s, b"not gzip", {**PB, "Content-Encoding": "gzip"})
        assert status == 400 and "gzip" in status_message(out).message
        status, _, out = await post(s, gzip.compress(FIXTURE_BYTES)[:-10], {**PB, "Content-Encoding": "gzip"})
        assert status == 400 and "truncated" in status_message(out).message
        assert s.sink.records == []
        assert s.delta(before) == {
            "rejected": {("http", "malformed"): 4}, "requests": {("http", "400"): 4},
        }

    run(body)


def test_http_unsupported_media_type_is_415():
    async def body(s: Servers):
        before = s.stats.snapshot()
        status, _, out = await post(s, FIXTURE_BYTES, {"Content-Type": "text/plain"})
        assert status == 415
        assert "Content-Type" in status_message(out).message
        status, _, out = await post(s, FIXTURE_BYTES, {"Content-Type": "application/octet-stream"})
        assert status == 415
        status, _, out = await post(s, FIXTURE_BYTES, {**PB, "Content-Encoding": "br"})
        assert status == 415
        assert "Content-Encoding" in status_message(out).message
        assert s.sink.records == []
        assert s.delta(before) == {
            "rejected": {("http", "unsupported_media_type"): 3}, "requests": {("http", "415"): 3},
        }

    run(body)


# A ledger found full before decoding sheds the message (counted as one); one that fills as the
# batch is submitted refuses its spans (counted each). Both answers say to retry.
FULL_WAYS = {"shed": ("full", {"rejected": {"shed": 1}}),
             "queue_full": ("refusing", {"received": 5, "ignored": 2, "rejected": {"queue_full": 3}})}


def counted(protocol: str, counts: dict, code: str) -> dict:
    out = {k: {protocol: v} for k, v in counts.items() if k != "rejected"}
    out["rejected"] = {(protocol, reason): n for reason, n in counts["rejected"].items()}
    out["requests"] = {(protocol, code): 1}
    return out


@pytest.mark.parametrize("way", FULL_WAYS)
def test_http_queue_full_is_503_with_retry_after(way):
    flag, counts = FULL_WAYS[way]

    async def body(s: Servers):
        setattr(s.sink, flag, True)
        before = s.stats.snapshot()
        status, headers, out = await post(s, FIXTURE_BYTES, PB)
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        assert status_message(out).code == code_pb2.UNAVAILABLE
        assert s.delta(before) == counted("http", counts, "503")
        setattr(s.sink, flag, False)
        status, _, _ = await post(s, FIXTURE_BYTES, PB)  # the retry succeeds
        assert status == 200
        assert [r.request_id for r in s.sink.records] == FIXTURE_IDS

    run(body)


def test_http_partial_success():
    async def body(s: Servers):
        before = s.stats.snapshot()
        status, _, out = await post(s, bad_span_request(), PB)
        assert status == 200
        resp = trace_service_pb2.ExportTraceServiceResponse()
        resp.ParseFromString(out)
        assert resp.partial_success.rejected_spans == 1
        assert "00000000deadbeef" in resp.partial_success.error_message
        assert "negative" in resp.partial_success.error_message
        assert [r.request_id for r in s.sink.records] == FIXTURE_IDS

        msg = trace_service_pb2.ExportTraceServiceRequest()
        msg.ParseFromString(bad_span_request())
        status, _, out = await post(s, json.dumps(to_otlp_json(msg)).encode(), JS)
        assert status == 200
        js = json.loads(out)
        assert js["partialSuccess"]["rejectedSpans"] in ("1", 1)
        assert "negative" in js["partialSuccess"]["errorMessage"]
        assert s.delta(before) == {
            "received": {"http": 12}, "accepted": {"http": 6}, "ignored": {"http": 4},
            "rejected": {("http", "invalid_span"): 2}, "requests": {("http", "200"): 2},
        }

    run(body)


def test_http_internal_error_is_500_and_counted(caplog):
    async def body(s: Servers):
        s.sink.broken = True
        before = s.stats.snapshot()
        with caplog.at_level(logging.ERROR, logger="jouletrace.exporter.intake.otlp_http"):
            status, _, out = await post(s, FIXTURE_BYTES, PB)
        assert status == 500
        assert status_message(out).code == code_pb2.INTERNAL
        assert any("failed" in r.getMessage() for r in caplog.records)
        assert s.delta(before) == {
            "rejected": {("http", "internal"): 1}, "requests": {("http", "500"): 1},
        }

    run(body)


def test_http_other_paths_and_methods_are_not_served():
    async def body(s: Servers):
        async with aiohttp.ClientSession() as session:
            async with session.get(s.url) as resp:
                assert resp.status == 405
            async with session.post(s.url.replace("traces", "metrics"), data=b"", headers=PB) as resp:
                assert resp.status == 404
        assert s.stats.snapshot()["requests"] == {}

    run(body)


# ------------------------------------------------------------------------------------------
# OTLP/gRPC with a raw client


def test_grpc_fixture_and_partial_success():
    async def body(s: Servers):
        out = await grpc_export(s, FIXTURE_BYTES)
        resp = trace_service_pb2.ExportTraceServiceResponse()
        resp.ParseFromString(out)
        assert not resp.HasField("partial_success")
        assert [r.request_id for r in s.sink.records] == FIXTURE_IDS

        out = await grpc_export(s, bad_span_request(), compression=grpc.Compression.Gzip)
        resp.ParseFromString(out)
        assert resp.partial_success.rejected_spans == 1
        assert "00000000deadbeef" in resp.partial_success.error_message
        assert [r.request_id for r in s.sink.records] == FIXTURE_IDS * 2
        snap = s.stats.snapshot()
        assert snap["received"]["grpc"] == 11
        assert snap["accepted"]["grpc"] == 6
        assert snap["ignored"]["grpc"] == 4
        assert snap["rejected"][("grpc", "invalid_span")] == 1
        assert snap["requests"] == {("grpc", "OK"): 2}
        assert snap["received"]["http"] == 0

    run(body)


def test_grpc_oversize_is_resource_exhausted_and_counted():
    big = FIXTURE_BYTES * (MAX_BYTES // len(FIXTURE_BYTES) + 1)
    assert len(big) > MAX_BYTES

    async def body(s: Servers):
        before = s.stats.snapshot()
        for message, compression in ((big, None), (b"\0" * (40 * MAX_BYTES), grpc.Compression.Gzip)):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await grpc_export(s, message, compression=compression)
            assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in exc.value.details()  # gRPC's core refused it, inflated or not
        assert s.sink.records == []
        assert s.delta(before) == {
            "rejected": {("grpc", "too_large"): 2}, "requests": {("grpc", "RESOURCE_EXHAUSTED"): 2},
        }
        await grpc_export(s, FIXTURE_BYTES)  # the refusals held no bytes
        assert len(s.sink.records) == 3

    run(body)


def test_grpc_garbage_is_invalid_argument():
    async def body(s: Servers):
        before = s.stats.snapshot()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpc_export(s, b"\xff\xff\xff\xff garbage")
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ExportTraceServiceRequest" in exc.value.details()
        assert s.delta(before) == {
            "rejected": {("grpc", "malformed"): 1}, "requests": {("grpc", "INVALID_ARGUMENT"): 1},
        }

    run(body)


@pytest.mark.parametrize("way", FULL_WAYS)
def test_grpc_queue_full_is_unavailable(way):
    flag, counts = FULL_WAYS[way]

    async def body(s: Servers):
        setattr(s.sink, flag, True)
        before = s.stats.snapshot()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpc_export(s, FIXTURE_BYTES)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert s.delta(before) == counted("grpc", counts, "UNAVAILABLE")

    run(body)


def test_grpc_internal_error_is_internal_and_counted():
    async def body(s: Servers):
        s.sink.broken = True
        before = s.stats.snapshot()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpc_export(s, FIXTURE_BYTES)
        assert exc.value.code() == grpc.StatusCode.INTERNAL
        assert s.delta(before) == {
            "rejected": {("grpc", "internal"): 1}, "requests": {("grpc", "INTERNAL"): 1},
        }
        s.sink.broken = False
        await grpc_export(s, FIXTURE_BYTES)  # and keeps serving
        assert len(s.sink.records) == 3

    run(body)


def test_grpc_unknown_method_is_unimplemented():
    async def body(s: Servers):
        async with grpc.aio.insecure_channel(s.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await channel.unary_unary(
                    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
                )(b"", timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert s.stats.snapshot()["requests"] == {}

    run(body)


def test_large_bodies_decode_off_the_event_loop():
    from jouletrace.exporter.intake.core import INLINE_DECODE_BYTES

    copies = INLINE_DECODE_BYTES // len(FIXTURE_BYTES) + 2
    big = FIXTURE_BYTES * copies  # concatenated messages merge: copies x 5 spans
    assert len(big) > INLINE_DECODE_BYTES

    async def main():
        async with running(max_bytes=4 * len(big)) as s:
            status, _, _ = await post(s, big, PB)
            assert status == 200
            await grpc_export(s, big)
            assert [r.request_id for r in s.sink.records] == FIXTURE_IDS * copies * 2
            snap = s.stats.snapshot()
            assert snap["accepted"] == {"http": 3 * copies, "grpc": 3 * copies}
            assert snap["ignored"] == {"http": 2 * copies, "grpc": 2 * copies}
    asyncio.run(main())


def test_spans_taken_from_a_sender_that_gave_up_during_the_decode_are_counted(monkeypatch):
    monkeypatch.setattr(intake, "INLINE_DECODE_BYTES", 0)  # every message decodes off the event loop

    class SlowSink(ListSink):
        def submit(self, batch):
            time.sleep(1.0)  # in the executor thread, while the sender's deadline passes
            super().submit(batch)

    async def body(s: Servers):
        before = s.stats.snapshot()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async with grpc.aio.insecure_channel(s.target) as channel:
                await channel.unary_unary(GRPC_METHOD)(FIXTURE_BYTES, timeout=0.3)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(1.5)
        assert [r.request_id for r in s.sink.records] == FIXTURE_IDS
        delta = s.delta(before)
        assert delta["accepted"] == {"grpc": 3} and delta["received"] == {"grpc": 5}

    async def main():
        sink, stats = SlowSink(), IntakeStats()
        server = GrpcIntake("127.0.0.1", 0, receiver(sink, stats))
        await server.start()
        try:
            await body(Servers(sink, stats, 0, server.port))
        finally:
            await server.stop()
    asyncio.run(main())


def test_port_in_use_raises():
    async def main():
        async with running() as s:
            with pytest.raises(OSError):
                await HttpIntake("127.0.0.1", s.http_port, receiver(ListSink(), IntakeStats())).start()
            with pytest.raises(OSError):
                await GrpcIntake("127.0.0.1", s.grpc_port, receiver(ListSink(), IntakeStats())).start()
            await grpc_export(s, FIXTURE_BYTES)  # the first servers still own their ports
            assert len(s.sink.records) == 3
    asyncio.run(main())


async def half_sent(s: Servers, n: int, length: int = MAX_BYTES) -> list:
    """`n` connections that send the headers of a `length`-byte message and 10 bytes of it."""
    held = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", s.http_port)
        writer.write(f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode() + b"\n" * 10)
        await writer.drain()
        held.append((reader, writer))
    await asyncio.sleep(0.2)  # the intake has started reading them
    return held


def test_http_bytes_in_flight_are_bounded_and_the_rest_shed():
    async def body(s: Servers):
        before = s.stats.snapshot()
        held = await half_sent(s, intake.IN_FLIGHT_MESSAGES)  # every byte the intake may hold at once
        status, headers, _ = await post(s, FIXTURE_BYTES, PB)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert s.delta(before) == {"rejected": {("http", "shed"): 1}, "requests": {("http", "503"): 1}}
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.2)
        status, _, _ = await post(s, FIXTURE_BYTES, PB)  # their bytes are no longer held
        assert status == 200

    run(body)


def test_http_body_not_received_in_time_is_408_and_frees_its_bytes(monkeypatch):
    monkeypatch.setattr(intake, "BODY_READ_TIMEOUT_S", 0.5)

    async def body(s: Servers):
        before = s.stats.snapshot()
        held = await half_sent(s, intake.IN_FLIGHT_MESSAGES)
        answers = [await asyncio.wait_for(reader.readline(), 5) for reader, _ in held]
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers)
        assert s.delta(before)["rejected"] == {("http", "too_slow"): intake.IN_FLIGHT_MESSAGES}
        status, _, _ = await post(s, FIXTURE_BYTES, PB)
        assert status == 200
        for _, writer in held:
            writer.close()

    run(body)


@contextlib.asynccontextmanager
async def grpc_calls_without_message(s: Servers, n: int):
    """`n` client-streaming calls to Export that send their headers and no message yet; on leaving,
    they send none and their outcomes (status codes) are in the yielded list."""
    channel = grpc.aio.insecure_channel(s.target)
    release = asyncio.Event()

    async def nothing_until_released():
        await release.wait()
        return
        yield

    calls = [channel.stream_unary(GRPC_METHOD)(nothing_until_released(), timeout=30) for _ in range(n)]
    codes: list = []
    try:
        await asyncio.sleep(0.3)  # the intake has admitted them
        yield calls, codes
    finally:
        release.set()
        for call in calls:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call
            codes.append(await call.code())
        await channel.close()


def test_grpc_calls_are_admitted_within_the_bytes_in_flight_and_the_rest_shed_unread():
    async def body(s: Servers):
        before = s.stats.snapshot()
        async with grpc_calls_without_message(s, intake.IN_FLIGHT_MESSAGES):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await grpc_export(s, FIXTURE_BYTES)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            info = dict(exc.value.trailing_metadata())["google.rpc.retryinfo-bin"]
            assert error_details_pb2.RetryInfo.FromString(info).retry_delay.seconds >= 1
            assert s.delta(before) == {"rejected": {("grpc", "shed"): 1}, "requests": {("grpc", "UNAVAILABLE"): 1}}
        await grpc_export(s, FIXTURE_BYTES)  # the held calls ended: their bytes are no longer held
        assert len(s.sink.records) == 3

    run(body)


def test_grpc_message_not_received_in_time_is_deadline_exceeded_and_frees_its_bytes(monkeypatch):
    monkeypatch.setattr(intake, "BODY_READ_TIMEOUT_S", 0.5)

    async def body(s: Servers):
        before = s.stats.snapshot()
        async with grpc_calls_without_message(s, intake.IN_FLIGHT_MESSAGES) as (_, codes):
            await asyncio.sleep(1.0)
            await grpc_export(s, FIXTURE_BYTES)  # the slow calls were refused and freed their bytes
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * intake.IN_FLIGHT_MESSAGES
        assert s.delta(before)["rejected"] == {("grpc", "too_slow"): intake.IN_FLIGHT_MESSAGES}
        assert len(s.sink.records) == 3

    run(body)


def test_grpc_call_with_several_messages_is_refused_whole():
    async def body(s: Servers):
        before = s.stats.snapshot()

        async def two():
            yield FIXTURE_BYTES
            yield FIXTURE_BYTES

        async with grpc.aio.insecure_channel(s.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await channel.stream_unary(GRPC_METHOD)(two(), timeout=10)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert s.sink.records == []
        assert s.delta(before) == {"rejected": {("grpc", "malformed"): 1}, "requests": {("grpc", "INVALID_ARGUMENT"): 1}}

    run(body)


def test_the_status_tables_docstring_is_the_table():
    """exporter/intake/status.py's docstring table lists every outcome with the codes STATUS gives it."""
    from jouletrace.exporter.intake import status

    rows = re.findall(r"^(\w+)\s+(\d{3})\s+([A-Z_]+)\s+(yes|-)\s", status.__doc__, re.M)
    documented = {name: (int(http), code, retry == "yes") for name, http, code, retry in rows if name != "outcome"}
    assert documented == {name: (a.http, a.grpc.name, a.retry) for name, a in status.STATUS.items()}
    assert set(status.STATUS) == {status.ACCEPTED, *(r for r in REASONS if r != "invalid_span")}
