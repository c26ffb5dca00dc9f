"""A short span flood against a live exporter whose ledger holds few requests: it answers the
protocols' retryable refusals with their retry hints, counts every refused span, attributes every
accepted one, keeps its memory bounded, and an OpenTelemetry SDK exporter caught in the flood
delivers its span by retrying. The full flood with figures is benchmarks/flood.py."""

from __future__ import annotations

import asyncio
import threading
import time

from aiohttp import web
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from servers import BackgroundApp, ExporterProcess, http_get, sum_samples, wait_for
from span_load import RETRYABLE, Stamper, exporter_counts, flood, peak_rss_bytes, sdk_span

MAX_PENDING = 4096
SPANS = 256  # per message
# Growth of the exporter's peak resident memory the flood may cause: the ledger's MAX_PENDING
# requests and span ids, and the messages in flight (32 x 155 kB) decoded, with room for the
# allocator (25 MB measured on two cores, with 2.6 million spans offered in the 3 s).
RSS_BOUND = 96 << 20


def metric(exporter: ExporterProcess, name: str, **labels: str) -> float:
    status, text = http_get(exporter.url("/metrics"))
    assert status == 200
    return sum_samples(text, name, **labels)


def test_flood_is_refused_retryably_counted_and_what_was_accepted_is_attributed():
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.7", "--settle-delay", "1", "--counter-interval", "0.5",
                               "--max-pending", str(MAX_PENDING), "--log-level", "warning")
    try:
        rss_before = peak_rss_bytes(exporter.proc.pid)
        sdk_result = []
        now_ns = time.time_ns()
        sdk = OTLPSpanExporter(endpoint=f"127.0.0.1:{exporter.grpc_port}", insecure=True, timeout=30)

        def sdk_export():
            sdk_result.append(sdk.export([sdk_span(i, now_ns, {"service.name": "sdk-model"}) for i in range(3)]))

        sender = threading.Thread(target=sdk_export)
        sender.start()
        tally = asyncio.run(flood(f"http://127.0.0.1:{exporter.http_port}/v1/traces",
                                  f"127.0.0.1:{exporter.grpc_port}", Stamper(SPANS), seconds=3.0))
        sender.join(60)
        sdk.shutdown()
        assert sdk_result == [SpanExportResult.SUCCESS]

        assert tally.other == {}
        assert tally.accepted_spans > 0 and tally.retry_spans > 0, tally.answers
        assert tally.without_retry_hint == 0
        assert peak_rss_bytes(exporter.proc.pid) - rss_before < RSS_BOUND

        # every answer and every refused span is counted
        for (protocol, code), n in tally.answers.items():
            assert metric(exporter, "jouletrace_otlp_requests_total", protocol=protocol, code=code) >= n
        refused = metric(exporter, "jouletrace_spans_rejected_total", reason="queue_full")  # spans, decoded
        shed = metric(exporter, "jouletrace_spans_rejected_total", reason="shed")  # messages, undecoded
        assert shed > 0  # a full ledger refuses without decoding
        assert refused + SPANS * shed >= tally.retry_spans  # the SDK's refused tries too
        assert metric(exporter, "jouletrace_spans_rejected_total") == refused + shed

        # every accepted span is attributed: counted as a finished request once no longer pending
        accepted = tally.accepted_spans + 3
        wait_for(lambda: metric(exporter, "jouletrace_requests_pending") == 0, 30, "the ledger to drain")
        assert metric(exporter, "jouletrace_model_requests_total") == accepted
        assert metric(exporter, "jouletrace_spans_received_total") == accepted + refused
        assert metric(exporter, "jouletrace_spans_duplicate_total") == 0
        assert exporter.proc.poll() is None
    finally:
        exporter.stop()


def test_a_flood_while_a_running_request_holds_settlement_keeps_memory_bounded():
    """The engine runs a request whose span never comes: settlement holds for it until the ledger is
    nearly full, then lets go (a hold given up), so senders are refused only briefly, memory stays
    bounded, and once the engine no longer runs it every accepted span is attributed."""
    running = {"n": 1}

    async def engine_metrics(request):
        return web.Response(text=f'vllm:num_requests_running{{model_name="reasoning"}} {running["n"]}\n'
                                 'vllm:request_success_total{model_name="reasoning"} 0\n')

    app = web.Application()
    app.router.add_get("/metrics", engine_metrics)
    engine = BackgroundApp(app)
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.7", "--counter-interval", "0.5",
                               "--engine-metrics", engine.url + "/metrics", "--engine-interval", "0.5",
                               "--max-pending", str(MAX_PENDING), "--log-level", "warning")
    try:
        rss_before = peak_rss_bytes(exporter.proc.pid)
        wait_for(lambda: metric(exporter, "jouletrace_settle_hold_seconds", reason="engine") > 1.0, 10,
                 "the running request to hold settlement")
        tally = asyncio.run(flood(f"http://127.0.0.1:{exporter.http_port}/v1/traces",
                                  f"127.0.0.1:{exporter.grpc_port}", Stamper(SPANS), seconds=3.0))
        assert tally.other == {} and tally.accepted_spans > MAX_PENDING, tally.answers
        assert metric(exporter, "jouletrace_settle_holds_expired_total") >= 1
        assert peak_rss_bytes(exporter.proc.pid) - rss_before < RSS_BOUND
        running["n"] = 0  # the request ended without a span (aborted): nothing is waited for
        wait_for(lambda: metric(exporter, "jouletrace_requests_pending") == 0, 30, "the ledger to drain")
        assert metric(exporter, "jouletrace_model_requests_total") == tally.accepted_spans
        assert exporter.proc.poll() is None
    finally:
        exporter.stop()
        engine.stop()


def test_open_loop_flood_of_large_messages_whose_senders_give_up_loses_nothing_accepted():
    """Messages of 2,048 spans (1.2 MB: decoded off the event loop) sent at a fixed rate whatever
    the answers, each given up by its sender after 0.5 s: whether a message was answered, refused
    or given up on, every span the exporter counted as accepted is attributed once, and nothing
    else is. (A sender giving up during the decode itself, which took a 10x flood on 16 cores to
    happen, is test_intake.py::test_spans_taken_from_a_sender_that_gave_up_during_the_decode_are_counted.)"""
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.7", "--settle-delay", "1", "--counter-interval", "0.5",
                               "--max-pending", str(MAX_PENDING), "--log-level", "warning")
    try:
        accepted_before, counted_before = exporter_counts(exporter)
        tally = asyncio.run(flood(f"http://127.0.0.1:{exporter.http_port}/v1/traces", f"127.0.0.1:{exporter.grpc_port}",
                                  Stamper(2048), seconds=3.0, in_flight=4, rate=40.0, timeout_s=0.5))
        assert set(tally.answers) <= {("http", "200"), ("grpc", "OK"), ("http", "timeout"), ("grpc", "timeout")} | RETRYABLE
        assert tally.without_retry_hint == 0
        wait_for(lambda: metric(exporter, "jouletrace_requests_pending") == 0, 30, "the ledger to drain")
        accepted, counted = exporter_counts(exporter)
        assert accepted - accepted_before >= tally.accepted_spans > 0  # and those accepted after their sender gave up
        assert counted - counted_before == accepted - accepted_before
        assert exporter.proc.poll() is None
    finally:
        exporter.stop()


def test_malloc_arenas_are_capped_unless_the_environment_says_otherwise(monkeypatch):
    """The cap that keeps a flood of large messages from growing the resident set with every burst
    (benchmarks/RESULTS.md: 411 -> 442 MiB over 5 repeats, against 576 -> 687 MiB uncapped). The C
    library's mallopt is recorded here rather than called."""
    import ctypes

    from jouletrace.exporter import daemon

    calls = []

    class Libc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    daemon.cap_malloc_arenas()
    assert calls == [(-8, daemon.MALLOC_ARENAS)]  # M_ARENA_MAX in glibc's malloc.h
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    daemon.cap_malloc_arenas()
    assert len(calls) == 1
