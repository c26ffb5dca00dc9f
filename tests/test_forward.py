"""Span forwarding: the ledger's per-request results, annotation, the forwarder's buffer, retries
and shutdown, and end to end a running exporter forwarding real SDK spans to real OTLP receivers
(grpcio with the official TraceService servicer; aiohttp at /v1/traces)."""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import re
import threading
import time
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from aiohttp import web
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from jouletrace.exporter.sinks.forward import (
    ATTR_GPUS,
    ATTR_JOULES,
    ATTR_PER_TOKEN,
    ATTR_STATUS,
    DROP_REASONS,
    Forwarder,
    annotate,
    otlp_json_to_message,
    parse_endpoint,
)
from jouletrace.exporter.ledger.ledger import span_key, span_keys
from jouletrace.exporter.sinks.prometheus.forward import ForwardCollector
from jouletrace.exporter.sinks.prometheus.registry import build_registry
from jouletrace.exporter.intake.otlp import decode_protobuf
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from otlp_json import to_otlp_json
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rig import Rig
from servers import ExporterProcess, free_port, http_get, wait_for

FIXTURE_BYTES = (Path(__file__).resolve().parent / "fixtures" / "vllm-0.32.0-cpu-llm_request.otlp.pb").read_bytes()
DOCS = Path(__file__).resolve().parents[1] / "docs"
LOAD = 0.6
SETTLE_S = 2.0
OURS = (ATTR_STATUS, ATTR_JOULES, ATTR_PER_TOKEN, ATTR_GPUS)


def parse(body: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    return trace_service_pb2.ExportTraceServiceRequest.FromString(body)


def all_spans(msg):
    """(resource, scope, span) for every span of an export request."""
    return [(rs.resource, ss.scope, span) for rs in msg.resource_spans for ss in rs.scope_spans for span in ss.spans]


def attr_values(span) -> dict:
    return {kv.key: json_format.MessageToDict(kv.value) for kv in span.attributes}


def fixture_keys() -> np.ndarray:
    return span_keys(decode_protobuf(FIXTURE_BYTES, "m").batch.rows)


# ------------------------------------------------------------------------------------------
# Real OTLP receivers


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: a grpcio server with the official TraceService servicer.

    `failures`: (status code, RetryInfo delay in seconds or None) to answer first, each once."""

    def __init__(self, port: int = 0, failures=()):
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.times: list[float] = []
        self.failures = list(failures)
        self.answered: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, f"cannot listen on port {port}"
        self.server.start()

    def Export(self, request, context):
        with self._lock:
            if self.failures:
                code, delay = self.failures.pop(0)
                self.answered.append((code.name, time.monotonic()))
                if delay is not None:
                    info = error_details_pb2.RetryInfo()
                    info.retry_delay.FromTimedelta(datetime.timedelta(seconds=delay))
                    st = status_pb2.Status(code=code.value[0], message="busy")
                    st.details.add().Pack(info)
                    context.set_trailing_metadata((("grpc-status-details-bin", st.SerializeToString()),))
                context.abort(code, "refused for the test")
            self.answered.append(("OK", time.monotonic()))
            self.requests.append(request)
            self.times.append(time.time())
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list:
        with self._lock:
            return [s for msg in self.requests for s in all_spans(msg)]

    def stop(self) -> None:
        self.server.stop(None)


class HttpReceiver:
    """An OTLP/HTTP trace receiver (aiohttp, POST /v1/traces, protobuf) on its own thread.

    `answers`: statuses to answer first (e.g. [503]), each once, before accepting."""

    def __init__(self, answers=(), retry_after: str | None = None):
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.answered: list[int] = []
        self.answers = list(answers)
        self.retry_after = retry_after
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post("/v1/traces", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return self.runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        if self.answers:
            status = self.answers.pop(0)
            self.answered.append(status)
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.Response(status=status, headers=headers)
        self.requests.append(parse(body))
        self.answered.append(200)
        return web.Response(body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def spans(self) -> list:
        return [s for msg in list(self.requests) for s in all_spans(msg)]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# ------------------------------------------------------------------------------------------
# Keys, the ledger's results, annotation


def test_span_key_of_a_wire_span_equals_the_ledgers_key_of_its_row():
    rows = decode_protobuf(FIXTURE_BYTES, "m").batch.rows
    spans = [s for _, _, s in all_spans(parse(FIXTURE_BYTES)) if s.name == "llm_request"]
    assert [span_key(s.trace_id, s.span_id) for s in spans] == span_keys(rows).tolist()
    assert len(set(span_keys(rows).tolist())) == 3


def test_ledger_reports_settled_late_and_duplicate_results(clock):
    got = []
    rig = Rig(clock, settle_delay_s=5.0, on_results=lambda *a: got.append(a))
    rig.run(2.0)
    a, b = rig.request(3.0, 2.0, rid="a", span_id=11), rig.request(3.5, 2.0, rid="b", span_id=12, completion=0)
    rig.run(4.0)
    rig.submit([a, b, a])  # a copy of a pending span: answered by the original's result
    assert got == []
    rig.run(10.0)
    (keys, energy, tokens, status), = got
    assert status == "settled"
    key = {r.request_id: span_keys(rig_rows([r]))[0] for r in (a, b)}
    assert sorted(keys.tolist()) == sorted(key.values())
    assert energy.sum() == pytest.approx(rig.models()["m"].energy_j, rel=1e-9)
    assert dict(zip(keys.tolist(), tokens.tolist())) == {key["a"]: 200, key["b"]: 0}
    got.clear()
    rig.submit([a, rig.request(0.5, 1.0, rid="old", span_id=13)])  # copy of a done span; an expired one
    statuses = {s: k.tolist() for k, e, t, s in got}
    assert statuses["duplicate"] == [key["a"]]
    assert len(statuses["late"]) == 1
    assert all(e.sum() == 0 for k, e, t, s in got)


def rig_rows(records):
    from jouletrace.exporter.ledger.records import RequestBatch
    return RequestBatch.from_records(records).rows


def test_annotate_changes_nothing_but_the_request_spans_attributes():
    keys = fixture_keys().tolist()
    results = {keys[0]: (12.5, 10, "settled"), keys[1]: (0.0, 7, "late")}  # keys[2]: no result
    out = annotate(FIXTURE_BYTES, "protobuf", set(keys), results, ["GPU-a", "GPU-b"])
    before, after = parse(FIXTURE_BYTES), parse(out)
    assert len(after.resource_spans) == len(before.resource_spans)
    for rs_b, rs_a in zip(before.resource_spans, after.resource_spans):
        assert rs_a.resource.SerializeToString() == rs_b.resource.SerializeToString()
        assert rs_a.schema_url == rs_b.schema_url
        for ss_b, ss_a in zip(rs_b.scope_spans, rs_a.scope_spans):
            assert ss_a.scope.SerializeToString() == ss_b.scope.SerializeToString()
            assert len(ss_a.spans) == len(ss_b.spans)
    pairs = list(zip(all_spans(before), all_spans(after)))
    requests = 0
    for (_, _, b), (_, _, a) in pairs:
        if b.name != "llm_request":
            # not a request: the very bytes received, found unchanged in what is forwarded
            assert a.SerializeToString() == b.SerializeToString()
            assert b.SerializeToString() in out
            continue
        requests += 1
        assert (a.trace_id, a.span_id, a.parent_span_id) == (b.trace_id, b.span_id, b.parent_span_id)
        n = len(b.attributes)
        assert list(a.attributes)[:n] == list(b.attributes)
        stripped = trace_service_pb2.ExportTraceServiceRequest()  # the span without the added attributes
        span = stripped.resource_spans.add().scope_spans.add().spans.add()
        span.CopyFrom(a)
        del span.attributes[n:]
        assert span.SerializeToString() == b.SerializeToString()
        added = attr_values(a)
        key = span_key(a.trace_id, a.span_id)
        assert added[ATTR_GPUS] == {"arrayValue": {"values": [{"stringValue": "GPU-a"}, {"stringValue": "GPU-b"}]}}
        if key == keys[0]:
            assert added[ATTR_STATUS] == {"stringValue": "settled"}
            assert added[ATTR_JOULES] == {"doubleValue": 12.5}
            assert added[ATTR_PER_TOKEN] == {"doubleValue": 1.25}
        else:
            assert added[ATTR_STATUS] == {"stringValue": "late" if key == keys[1] else "unsettled"}
            assert ATTR_JOULES not in added and ATTR_PER_TOKEN not in added
    assert requests == 3
    # annotating twice replaces, never repeats, the attributes
    again = parse(annotate(out, "protobuf", set(keys), results, ["GPU-a", "GPU-b"]))
    assert again == after


def test_otlp_json_is_forwarded_as_the_same_protobuf():
    msg = parse(FIXTURE_BYTES)
    assert otlp_json_to_message(otlp_json_bytes(msg)) == msg
    keys = set(fixture_keys().tolist())
    results = {k: (1.0, 2, "settled") for k in keys}
    assert annotate(otlp_json_bytes(msg), "json", keys, results, ["g"]) == annotate(FIXTURE_BYTES, "protobuf", keys,
                                                                                 results, ["g"])


@pytest.mark.parametrize("url", ["tempo:4317", "grpc://", "ftp://x/v1/traces"])
def test_a_malformed_forward_url_is_refused(url, capsys):
    from jouletrace.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["exporter", "--forward-otlp", url])
    assert exc.value.code == 2 and "--forward-otlp" in capsys.readouterr().err


def test_endpoints():
    assert parse_endpoint("grpc://collector:4317") == ("grpc", "collector:4317", False)
    assert parse_endpoint("grpcs://collector:4317") == ("grpc", "collector:4317", True)
    assert parse_endpoint("http://tempo:4318") == ("http", "http://tempo:4318/v1/traces", False)
    assert parse_endpoint("https://x/otlp/v1/traces") == ("http", "https://x/otlp/v1/traces", True)
    with pytest.raises(ValueError):
        parse_endpoint("grpc://")


# ------------------------------------------------------------------------------------------
# The forwarder in process, against real receivers


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def forwarder(url: str, **kw) -> Forwarder:
    options = {"gpu_uuids": lambda: ["GPU-test"], "hold_s": 30.0, "buffer_bytes": 1 << 20, "timeout_s": 2.0,
               "retry_max_s": 30.0, **kw}
    return Forwarder(url, **options)


async def until(predicate, timeout_s: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_a_message_waits_for_its_results_then_goes_with_them():
    receiver = GrpcReceiver()
    keys = fixture_keys()

    async def body():
        fw = forwarder(f"grpc://127.0.0.1:{receiver.port}")
        await fw.start()
        fw.offer(FIXTURE_BYTES, keys, 5, "protobuf")
        fw.offer(FIXTURE_BYTES[:0], np.zeros(0, np.uint64), 0, "protobuf")  # nothing to wait for
        await asyncio.sleep(0.8)
        assert receiver.spans() == [] and fw.held_spans == 5
        fw.on_results(keys[:2], np.array([3.0, 4.0]), np.array([10, 0]), "settled")
        await asyncio.sleep(0.8)
        assert receiver.spans() == []  # one span still has no result
        t0 = time.monotonic()
        threading.Thread(target=fw.on_results, args=(keys[2:], np.array([5.0]), np.array([1]), "settled")).start()
        await until(lambda: len(receiver.spans()) == 5, what="delivery")
        woke_in = time.monotonic() - t0
        await fw.stop()
        return fw, woke_in

    fw, woke_in = run(body())
    receiver.stop()
    assert woke_in < 0.4  # a result wakes the forwarder; it does not wait for its next tick
    got = {span_key(s.trace_id, s.span_id): attr_values(s) for _, _, s in receiver.spans()}
    energies = {k: got[k][ATTR_JOULES]["doubleValue"] for k in keys.tolist()}
    assert energies == dict(zip(keys.tolist(), [3.0, 4.0, 5.0]))
    assert fw.sent_spans == 5 and sum(fw.dropped_spans.values()) == 0 and fw.held_spans == 0
    assert fw.buffered_bytes == 0
    assert sum(fw.delay_counts) == 2 and fw.delay_sum_s > 1.5


def test_the_gpus_are_named_as_the_message_leaves():
    """A device file's GPUs are named once it appears: the forwarder asks their UUIDs at sending."""
    receiver = GrpcReceiver()
    keys = fixture_keys()
    names = ["sim-slot-0"]

    async def body():
        fw = forwarder(f"grpc://127.0.0.1:{receiver.port}", gpu_uuids=lambda: list(names))
        await fw.start()
        fw.offer(FIXTURE_BYTES, keys, 5, "protobuf")
        names[0] = "GPU-51000000-0000-4000-8000-000000000000"  # the file appeared
        fw.on_results(keys, np.array([1.0, 2.0, 3.0]), np.array([1, 1, 1]), "settled")
        await until(lambda: len(receiver.spans()) == 5, what="delivery")
        await fw.stop()

    run(body())
    receiver.stop()
    gpus = [attr_values(s)[ATTR_GPUS] for _, _, s in receiver.spans() if ATTR_GPUS in attr_values(s)]
    assert gpus == [{"arrayValue": {"values": [{"stringValue": names[0]}]}}] * 3


def test_copies_of_a_span_share_its_result_and_a_late_copy_is_marked_duplicate():
    receiver = GrpcReceiver()
    keys = fixture_keys()
    energy, tokens = np.array([1.0, 2.0, 3.0]), np.array([1, 1, 1])

    async def body():
        fw = forwarder(f"grpc://127.0.0.1:{receiver.port}")
        await fw.start()
        fw.offer(FIXTURE_BYTES, keys, 5, "protobuf")
        fw.offer(FIXTURE_BYTES, keys, 5, "protobuf")  # a sender's retry: the ledger reports nothing for it
        await asyncio.sleep(0.2)
        fw.on_results(keys, energy, tokens, "settled")
        await until(lambda: fw.sent_spans == 10, what="both copies")
        fw.on_results(keys, np.zeros(3), tokens, "duplicate")  # a third copy, soon after: still known
        fw.offer(FIXTURE_BYTES, keys, 5, "protobuf")
        await until(lambda: fw.sent_spans == 15, what="the third copy")
        fw._results.clear()  # long after (RESULT_TTL_S): only the duplicate result is there
        fw.offer(FIXTURE_BYTES, keys, 5, "protobuf")
        fw.on_results(keys, np.zeros(3), tokens, "duplicate")
        await until(lambda: fw.sent_spans == 20, what="the fourth copy")
        await fw.stop()

    run(body())
    receiver.stop()
    copies = collections.defaultdict(list)  # key -> its copies' attributes, in the order they arrived
    for _, _, span in receiver.spans():
        copies[span_key(span.trace_id, span.span_id)].append(attr_values(span))
    for k, e in zip(keys.tolist(), energy.tolist()):
        assert len(copies[k]) == 4
        for attrs in copies[k][:3]:
            assert attrs[ATTR_STATUS] == {"stringValue": "settled"} and attrs[ATTR_JOULES] == {"doubleValue": e}
        assert copies[k][3][ATTR_STATUS] == {"stringValue": "duplicate"} and ATTR_JOULES not in copies[k][3]


def test_a_message_without_results_goes_unsettled_after_the_hold_limit():
    receiver = GrpcReceiver()

    async def body():
        fw = forwarder(f"grpc://127.0.0.1:{receiver.port}", hold_s=0.6)
        await fw.start()
        fw.offer(FIXTURE_BYTES, fixture_keys(), 5, "protobuf")
        await until(lambda: len(receiver.spans()) == 5, what="delivery")
        await fw.stop()

    run(body())
    receiver.stop()
    statuses = [attr_values(s).get(ATTR_STATUS) for _, _, s in receiver.spans()]
    assert statuses.count({"stringValue": "unsettled"}) == 3 and statuses.count(None) == 2


def test_the_buffer_drops_the_oldest_messages_and_counts_their_spans():
    fw = forwarder("grpc://127.0.0.1:9", buffer_bytes=2 * len(FIXTURE_BYTES) + 10)
    for spans in (1, 2, 3, 4):
        fw.offer(FIXTURE_BYTES, fixture_keys(), spans, "protobuf")
    assert fw.dropped_spans["buffer_full"] == 1 + 2
    assert fw.held_spans == 3 + 4 and fw.buffered_bytes == 2 * len(FIXTURE_BYTES)
    fw.offer(b"x" * (3 * len(FIXTURE_BYTES)), np.zeros(0, np.uint64), 9, "protobuf")  # larger than the buffer
    assert fw.dropped_spans["buffer_full"] == 1 + 2 + 9 and fw.held_spans == 3 + 4


def test_grpc_retryable_codes_are_retried_as_the_upstream_asks_and_others_dropped():
    codes = grpc.StatusCode
    receiver = GrpcReceiver(failures=[(codes.UNAVAILABLE, None), (codes.RESOURCE_EXHAUSTED, 1.2)])
    none = np.zeros(0, np.uint64)

    async def body():
        fw = forwarder(f"grpc://127.0.0.1:{receiver.port}")
        await fw.start()
        fw.offer(FIXTURE_BYTES, none, 5, "protobuf")
        await until(lambda: fw.sent_spans == 5, what="delivery after UNAVAILABLE and RESOURCE_EXHAUSTED")
        assert fw.retries == 2
        # RESOURCE_EXHAUSTED without RetryInfo, and INVALID_ARGUMENT, are not retryable
        receiver.failures = [(codes.RESOURCE_EXHAUSTED, None), (codes.INVALID_ARGUMENT, None)]
        fw.offer(FIXTURE_BYTES, none, 5, "protobuf")
        await until(lambda: fw.dropped_spans["rejected"] == 5, what="a refusal")
        fw.offer(FIXTURE_BYTES, none, 5, "protobuf")
        await until(lambda: fw.dropped_spans["rejected"] == 10, what="a second refusal")
        await fw.stop()
        return fw

    fw = run(body())
    receiver.stop()
    names = [name for name, _ in receiver.answered]
    assert names == ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "OK", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"]
    (_, t0), (_, t1), (_, t2) = receiver.answered[:3]
    assert 0.4 < t1 - t0 < 1.0  # the first backoff step
    assert t2 - t1 >= 1.15  # RetryInfo's delay
    assert fw.retries == 2 and fw.sent_spans == 5 and fw.held_spans == 0


def test_the_wait_between_retries_doubles_up_to_retry_max():
    codes = grpc.StatusCode
    receiver = GrpcReceiver(failures=[(codes.UNAVAILABLE, None)] * 5)

    async def body():
        fw = forwarder(f"grpc://127.0.0.1:{receiver.port}", retry_max_s=0.8)
        await fw.start()
        fw.offer(FIXTURE_BYTES, np.zeros(0, np.uint64), 5, "protobuf")
        await until(lambda: fw.sent_spans == 5, what="delivery after five refusals")
        await fw.stop()

    run(body())
    receiver.stop()
    times = [t for _, t in receiver.answered]
    gaps = np.diff(times)
    assert len(times) == 6
    assert 0.4 < gaps[0] < 0.7 and all(0.7 < g < 1.1 for g in gaps[1:])  # 0.5 s, then 0.8 s, not 1, 2, 4, 8 s


def test_http_retryable_answers_are_retried_and_refusals_counted():
    receiver = HttpReceiver(answers=[503, 429], retry_after="0")

    async def body():
        fw = forwarder(receiver.url)
        await fw.start()
        fw.offer(FIXTURE_BYTES, np.zeros(0, np.uint64), 5, "protobuf")
        await until(lambda: fw.sent_spans == 5, what="delivery after 503 and 429")
        assert fw.retries == 2 and fw.up
        receiver.answers = [400]
        fw.offer(FIXTURE_BYTES, np.zeros(0, np.uint64), 5, "protobuf")
        await until(lambda: fw.dropped_spans["rejected"] == 5, what="a refusal")
        await fw.stop()
        return fw

    fw = run(body())
    receiver.stop()
    assert receiver.answered == [503, 429, 200, 400]
    assert fw.sent_spans == 5 and fw.held_spans == 0 and fw.retries == 2


def test_stop_sends_what_is_held_or_counts_it_dropped():
    receiver = GrpcReceiver()

    async def body(url):
        fw = forwarder(url)
        await fw.start()
        fw.offer(FIXTURE_BYTES, fixture_keys(), 5, "protobuf")  # no results will come
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        await fw.stop(grace_s=1.0)
        return fw, time.monotonic() - t0

    fw, _ = run(body(f"grpc://127.0.0.1:{receiver.port}"))
    receiver.stop()
    assert fw.sent_spans == 5 and len(receiver.spans()) == 5
    fw, took = run(body(f"grpc://127.0.0.1:{free_port()}"))  # nobody listens
    assert fw.dropped_spans["shutdown"] == 5 and fw.sent_spans == 0 and took < 2.5


def test_forward_metrics_are_documented():
    fw = forwarder("grpc://127.0.0.1:9")
    text = generate_latest(build_registry([ForwardCollector(fw.snapshot)])).decode()
    families = {name: kind for name, kind in re.findall(r"^# TYPE (jouletrace_forward\S+) (\S+)", text, re.M)}
    assert len(families) == 7
    for name, kind in families.items():
        documented = name + "_total" if kind == "counter" and not name.endswith("_total") else name
        assert f"`{documented}`" in (DOCS / "metrics.md").read_text()
    for reason in DROP_REASONS:
        assert f'jouletrace_forward_spans_dropped_total{{reason="{reason}"}} 0.0' in text
    for attr in OURS:
        assert f"`{attr}`" in (DOCS / "forwarding.md").read_text()


# ------------------------------------------------------------------------------------------
# End to end: `jouletrace exporter --forward-otlp` with the OpenTelemetry SDK in front


def metrics(exporter: ExporterProcess) -> dict:
    """{(sample name, frozenset of labels): value} of the exporter's /metrics."""
    status, text = http_get(exporter.url("/metrics"))
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in m.items() if n == name and want <= lab)


def make_spans(service: str, n: int, seconds: float = 0.3):
    """n llm_request spans (under one parent span, which is no request) made by the SDK, slept in
    real time so that they ran on the exporter's GPU clock; returns (spans, request spans)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("forward-test", "1.2.3")
    with tracer.start_as_current_span("handle_batch"):
        for i in range(n):
            with tracer.start_as_current_span("llm_request", attributes={
                "gen_ai.request.id": f"{service}-{i}",
                "gen_ai.usage.prompt_tokens": 100 + i,
                "gen_ai.usage.completion_tokens": 20 + i,
                "custom.tag": f"t{i}",
            }):
                time.sleep(seconds)
    provider.shutdown()
    spans = memory.get_finished_spans()
    return spans, [s for s in spans if s.name == "llm_request"]


def grpc_sdk_exporter(exporter: ExporterProcess):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=f"127.0.0.1:{exporter.grpc_port}", insecure=True, timeout=10)


def export_each(sdk_exporter, spans) -> list[float]:
    """One OTLP export call (one message) per span; returns the time each call was answered."""
    from opentelemetry.sdk.trace.export import SpanExportResult
    answered = []
    for s in spans:
        assert sdk_exporter.export([s]) == SpanExportResult.SUCCESS
        answered.append(time.time())
    sdk_exporter.shutdown()
    return answered


def ids(span) -> tuple[bytes, bytes]:
    return span.context.trace_id.to_bytes(16, "big"), span.context.span_id.to_bytes(8, "big")


def check_forwarded(forwarded: list, sent, service: str, m: dict, gpu_uuid: str) -> None:
    """Every SDK span forwarded once and unchanged but for the energy attributes, which add up to
    the exporter's energy for the model."""
    counts = collections.Counter((s.trace_id, s.span_id) for _, _, s in forwarded)
    assert set(counts) == {ids(s) for s in sent} and set(counts.values()) == {1}
    by_id = {(s.trace_id, s.span_id): (res, scope, s) for res, scope, s in forwarded}
    total_j = 0.0
    for original in sent:
        res, scope, span = by_id[ids(original)]
        parent = original.parent.span_id.to_bytes(8, "big") if original.parent else b""
        assert span.parent_span_id == parent and span.name == original.name
        assert (span.start_time_unix_nano, span.end_time_unix_nano) == (original.start_time, original.end_time)
        assert {kv.key: kv.value.string_value for kv in res.attributes if kv.key in ("service.name", "deployment")} \
            == {"service.name": service, "deployment": "test"}
        assert (scope.name, scope.version) == ("forward-test", "1.2.3")
        got = attr_values(span)
        for key, v in original.attributes.items():
            assert list(got[key].values()) in ([v], [str(v)])  # ints are strings in protobuf's JSON
        if original.name != "llm_request":
            assert not set(OURS) & set(got)
            continue
        assert got[ATTR_STATUS] == {"stringValue": "settled"}
        assert got[ATTR_GPUS] == {"arrayValue": {"values": [{"stringValue": gpu_uuid}]}}
        joules = got[ATTR_JOULES]["doubleValue"]
        assert joules > 0
        assert got[ATTR_PER_TOKEN]["doubleValue"] == pytest.approx(
            joules / original.attributes["gen_ai.usage.completion_tokens"], rel=1e-12)
        total_j += joules
    assert total_j == pytest.approx(value(m, "jouletrace_model_energy_joules_total", model=service), rel=1e-9)


def gpu_uuid(m: dict) -> str:
    (labels,) = [dict(lab) for (n, lab) in m if n == "jouletrace_gpu_up"]
    return labels["uuid"]


def start_exporter(*args: str) -> ExporterProcess:
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", str(LOAD), "--settle-delay", str(SETTLE_S),
                               "--counter-interval", "1", *args)
    # the fixture's spans must find energy already split (whole late); a scrape that gets no answer
    # within http_get's 5 s on a busy machine is one more wait, not a failure
    wait_for(lambda: http_get(exporter.url("/metrics"))[0] == 200
             and value(metrics(exporter), "jouletrace_attribution_passes_total") >= 2, 20, "two passes")
    return exporter


def test_exporter_forwards_sdk_spans_over_grpc_with_their_energy():
    receiver = GrpcReceiver()
    exporter = start_exporter("--forward-otlp", f"grpc://127.0.0.1:{receiver.port}")
    try:
        spans, requests = make_spans("fwd-grpc", 4)
        answered = export_each(grpc_sdk_exporter(exporter), spans)
        # the vLLM fixture as OTLP/JSON: its requests ended long ago (late); its other spans ride along
        req = urllib.request.Request(f"http://127.0.0.1:{exporter.http_port}/v1/traces",
                                     data=otlp_json_bytes(parse(FIXTURE_BYTES)),
                                     headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=5).status == 200
        wait_for(lambda: len(receiver.spans()) == len(spans) + 5, 30, "every span upstream")
        m = metrics(exporter)
    finally:
        assert exporter.stop() == 0, exporter.output()
        receiver.stop()
    forwarded = receiver.spans()
    fixture_ids = {(s.trace_id, s.span_id) for _, _, s in all_spans(parse(FIXTURE_BYTES))}
    check_forwarded([f for f in forwarded if (f[2].trace_id, f[2].span_id) not in fixture_ids], spans, "fwd-grpc",
                    m, gpu_uuid(m))
    late = [attr_values(s) for _, _, s in forwarded if (s.trace_id, s.span_id) in fixture_ids]
    assert sorted(str(a.get(ATTR_STATUS)) for a in late) == ["None"] * 2 + ["{'stringValue': 'late'}"] * 3
    assert value(m, "jouletrace_model_requests_total", model="fwd-grpc") == len(requests)
    received = value(m, "jouletrace_spans_received_total")
    assert value(m, "jouletrace_forward_spans_sent_total") == received == len(spans) + 5
    assert value(m, "jouletrace_forward_spans_dropped_total") == 0
    assert value(m, "jouletrace_forward_spans_held") == 0 and value(m, "jouletrace_forward_buffer_bytes") == 0
    # A request's message waits until its energy is split: at least until settle delay after the
    # request ended (it arrived some time after that end), at most a few passes more.
    n = value(m, "jouletrace_forward_delay_seconds_count")
    assert n == len(spans) + 1
    least = sum(s.end_time / 1e9 + SETTLE_S - t for s, t in zip(spans, answered) if s.name == "llm_request")
    assert least < value(m, "jouletrace_forward_delay_seconds_sum") < least + 4 * len(requests) + 1


def test_exporter_forwards_to_an_http_upstream_that_first_answers_503():
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    receiver = HttpReceiver(answers=[503], retry_after="1")
    exporter = start_exporter("--forward-otlp", receiver.url)
    try:
        spans, _ = make_spans("fwd-http", 3)
        export_each(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{exporter.http_port}/v1/traces", timeout=10), spans)
        wait_for(lambda: len(receiver.spans()) == len(spans), 30, "every span upstream")
        m = metrics(exporter)
    finally:
        assert exporter.stop() == 0, exporter.output()
        receiver.stop()
    check_forwarded(receiver.spans(), spans, "fwd-http", m, gpu_uuid(m))
    assert receiver.answered[0] == 503 and value(m, "jouletrace_forward_retries_total") >= 1
    assert value(m, "jouletrace_forward_spans_dropped_total") == 0


def test_upstream_down_then_back_gets_every_span_once():
    port = free_port()  # nobody listens yet
    exporter = start_exporter("--forward-otlp", f"grpc://127.0.0.1:{port}")
    receiver = None
    try:
        spans, _ = make_spans("fwd-down", 4)
        export_each(grpc_sdk_exporter(exporter), spans)
        wait_for(lambda: value(metrics(exporter), "jouletrace_forward_retries_total") >= 3, 30, "retries")
        m = metrics(exporter)
        assert value(m, "jouletrace_forward_spans_held") == len(spans)
        assert value(m, "jouletrace_forward_up") == 0
        assert value(m, "jouletrace_forward_buffer_bytes") > 0
        receiver = GrpcReceiver(port)
        wait_for(lambda: len(receiver.spans()) == len(spans), 60, "delivery once the upstream is back")
        m = metrics(exporter)
    finally:
        assert exporter.stop() == 0, exporter.output()
        if receiver:
            receiver.stop()
    check_forwarded(receiver.spans(), spans, "fwd-down", m, gpu_uuid(m))
    assert value(m, "jouletrace_forward_spans_dropped_total") == 0
    assert value(m, "jouletrace_forward_spans_sent_total") == len(spans)
    assert value(m, "jouletrace_forward_up") == 1
    log = exporter.output()
    assert log.count("forwarding to") >= 2 and "failing" in log and "works again" in log
    assert log.count("failing") == 1  # once per state change, not per retry


def test_a_full_buffer_drops_the_oldest_and_counts_every_span():
    port = free_port()
    exporter = start_exporter("--forward-otlp", f"grpc://127.0.0.1:{port}", "--forward-buffer-bytes", "1500")
    receiver = None
    try:
        spans, _ = make_spans("fwd-full", 10, seconds=0.05)
        export_each(grpc_sdk_exporter(exporter), spans)  # 11 messages of ~300 bytes
        m = metrics(exporter)
        dropped = value(m, "jouletrace_forward_spans_dropped_total", reason="buffer_full")
        held = value(m, "jouletrace_forward_spans_held")
        assert dropped > 0 and held > 0 and value(m, "jouletrace_forward_buffer_bytes") <= 1500
        assert dropped + held == len(spans)
        receiver = GrpcReceiver(port)
        wait_for(lambda: value(metrics(exporter), "jouletrace_forward_spans_held") == 0, 60, "the rest delivered")
        m = metrics(exporter)
    finally:
        assert exporter.stop() == 0, exporter.output()
        if receiver:
            receiver.stop()
    sent = value(m, "jouletrace_forward_spans_sent_total")
    assert sent + value(m, "jouletrace_forward_spans_dropped_total") == value(m, "jouletrace_spans_received_total")
    assert value(m, "jouletrace_forward_spans_dropped_total", reason="buffer_full") == dropped
    assert len(receiver.spans()) == sent
    # the newest messages were kept: the forwarded spans are the last ones sent
    last = {ids(s) for s in spans[-int(sent):]}
    assert {(s.trace_id, s.span_id) for _, _, s in receiver.spans()} == last


def otlp_json_bytes(msg) -> bytes:
    return json.dumps(to_otlp_json(msg)).encode()


@pytest.mark.parametrize("url,warned", [
    ("http://127.0.0.1:4317", "grpc://127.0.0.1:4317"), ("https://collector:4317/v1/traces", "grpc://collector:4317"),
    ("http://127.0.0.1:4318", None), ("http://collector4317", None), ("grpc://127.0.0.1:4317", None)])
def test_an_http_url_on_the_grpc_port_is_warned_of_once_at_start(caplog, url, warned):
    """The warning comes at start, before any send, in one line; OTLP/HTTP's port and grpc:// get none."""
    async def body():
        fw = forwarder(url)
        await fw.start()
        await fw.stop()

    with caplog.at_level(logging.WARNING, logger="jouletrace.exporter.sinks.forward"):
        run(body())
    lines = [r.getMessage() for r in caplog.records if "OTLP/gRPC port" in r.getMessage()]
    if warned is None:
        assert lines == []
    else:
        assert lines == [f"--forward-otlp {url}: 4317 is the OTLP/gRPC port; use {warned} if the target speaks gRPC"]


def test_an_http_url_to_a_grpc_receiver_says_to_use_grpc(caplog):
    """`http://host:4317` is OpenTelemetry's convention for OTLP/gRPC: the refusal says so."""
    receiver = GrpcReceiver()

    async def body():
        fw = forwarder(f"http://127.0.0.1:{receiver.port}")
        await fw.start()
        fw.offer(FIXTURE_BYTES, np.zeros(0, np.uint64), 5, "protobuf")
        await until(lambda: fw.dropped_spans["rejected"] == 5, what="a refusal")
        await fw.stop()
        return fw

    with caplog.at_level(logging.WARNING):
        fw = run(body())
    receiver.stop()
    assert fw.retries == 0 and fw.sent_spans == 0 and not receiver.requests
    assert f"as an OTLP/gRPC receiver does (port 4317 by convention): forward to grpc://127.0.0.1:{receiver.port} " \
           "instead" in caplog.text
